// The progress plot of the HTML report and of the dashboard: draws `D`
// into the SVG element `svg` and its legend into `legend` (both emptied
// first). Each terminal trial is one element of class `pt`: scored ones as
// dots at their score, failed ones as crosses in the lane under the plot,
// by label. D: {metric, direction, band, outcomes: [name], specialists:
// [name], points: [[id, outcome index, score or null, specialist index]],
// incumbents: [[from id, score, sd or null]]}.
function ratchetPlot(svg, legend, D) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  while (legend.firstChild) legend.removeChild(legend.firstChild);
  var NS = 'http://www.w3.org/2000/svg';
  var W = 980, L = 70, R = 20, T = 16, B = 330, LANE = 372;
  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    (parent || svg).appendChild(e);
    return e;
  }
  function fmt(v) {
    var a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(2) : String(+v.toPrecision(4));
  }
  var pts = D.points, inc = D.incumbents;
  var minimize = D.direction !== 'maximize';
  var ids = pts.map(function (p) { return p[0]; });
  var x0 = ids.length ? ids[0] : 0;
  var x1 = ids.length ? ids[ids.length - 1] : 1;
  if (x1 <= x0) x1 = x0 + 1;
  var scores = pts.filter(function (p) { return p[2] !== null; }).map(function (p) { return p[2]; });
  scores.sort(function (a, b) { return a - b; });
  var kept = inc.map(function (i) { return i[1]; });
  var lo, hi;
  if (scores.length) {
    // The worst tenth of the scores may lie off the plot (drawn at its edge).
    var q = function (f) { return scores[Math.min(scores.length - 1, Math.floor(f * (scores.length - 1)))]; };
    lo = minimize ? q(0) : q(0.1);
    hi = minimize ? q(0.9) : q(1);
    kept.concat(inc.map(function (i) { return i[1] + D.band * (i[2] || 0); }),
                inc.map(function (i) { return i[1] - D.band * (i[2] || 0); })).forEach(function (v) {
      if (isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    });
  } else { lo = 0; hi = 1; }
  if (hi <= lo) { hi = lo + 1; }
  var pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
  function X(id) { return L + (id - x0) / (x1 - x0) * (W - L - R); }
  function Y(v) { return T + (hi - Math.min(hi, Math.max(lo, v))) / (hi - lo) * (B - T); }
  var axis = el('g', {'class': 'axis'});
  el('line', {x1: L, y1: B, x2: W - R, y2: B}, axis);
  el('line', {x1: L, y1: T, x2: L, y2: B}, axis);
  // Ticks at round numbers: a step of 1, 2, 2.5 or 5 times a power of
  // ten, [step, decimals its labels need].
  function step(span, n) {
    var raw = span / n, e = Math.floor(Math.log10(raw)), p = Math.pow(10, e);
    var m = [1, 2, 2.5, 5, 10].find(function (k) { return k * p >= raw * (1 - 1e-9); });
    if (m === 10) { m = 1; e += 1; p *= 10; }
    return [m * p, Math.max(0, -e + (m === 2.5 ? 1 : 0))];
  }
  function label(v, d) {
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
    return v.toFixed(Math.min(d, 10));
  }
  var yt = step(hi - lo, 5), ys = yt[0];
  // A range too narrow for the numbers' precision (or none) gets fifths.
  var round = ys > Math.abs(lo) * 1e-12 && isFinite(ys);
  var first = round ? Math.ceil(lo / ys) * ys : lo;
  if (!round) ys = (hi - lo) / 5;
  for (var k = 0; k <= 12 && first + k * ys <= hi + ys * 1e-9; k++) {
    var v = first + k * ys, y = Y(v);
    el('line', {x1: L - 4, y1: y, x2: W - R, y2: y, stroke: '#eee'}, axis);
    el('text', {x: L - 6, y: y + 4, 'text-anchor': 'end', 'class': 'ytick'}, axis).textContent = round ? label(v, yt[1]) : fmt(v);
  }
  var xs = Math.max(1, Math.round(step(x1 - x0, 8)[0]));
  if (xs === 3) xs = 2; // a step of 2.5 trials
  for (var id = Math.ceil(x0 / xs) * xs, n = 0; id <= x1 && n <= 12; id += xs, n++) {
    var x = X(id);
    el('line', {x1: x, y1: B, x2: x, y2: B + 4}, axis);
    el('text', {x: x, y: LANE + 30, 'text-anchor': 'middle', 'class': 'xtick'}, axis).textContent = id;
  }
  el('text', {x: (L + W) / 2, y: LANE + 52, 'text-anchor': 'middle'}, axis).textContent = 'trial';
  el('text', {x: 14, y: (T + B) / 2, transform: 'rotate(-90 14 ' + (T + B) / 2 + ')', 'text-anchor': 'middle'}, axis).textContent = D.metric + (minimize ? ' (lower is better)' : ' (higher is better)');
  el('text', {x: L - 6, y: LANE + 4, 'text-anchor': 'end'}, axis).textContent = 'no score';
  el('line', {x1: L, y1: LANE, x2: W - R, y2: LANE, stroke: '#eee'}, axis);
  // The noise band around each incumbent and the running best as a step line.
  var step = '';
  inc.forEach(function (c, k) {
    var xa = X(c[0]), xb = k + 1 < inc.length ? X(inc[k + 1][0]) : W - R;
    if (c[2] !== null && c[2] > 0) {
      var ya = Y(c[1] + D.band * c[2]), yb = Y(c[1] - D.band * c[2]);
      el('rect', {'class': 'band', x: xa, y: Math.min(ya, yb), width: Math.max(0, xb - xa), height: Math.abs(yb - ya), fill: '#2a9d55', 'fill-opacity': 0.13});
    }
    step += (k ? 'V' : 'M' + xa + ' ') + Y(c[1]) + 'H' + xb;
  });
  if (step) el('path', {'class': 'best', d: step, fill: 'none', stroke: '#2a9d55', 'stroke-width': 2});
  var palette = ['#d62728', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f', '#1f77b4', '#aec7e8'];
  var colour = {}, counts = {}, failedIdx = 0;
  D.outcomes.forEach(function (o) {
    if (o === 'kept') colour[o] = '#2a9d55';
    else if (o === 'within_noise' || o === 'regressed' || o === 'rebased') colour[o] = '#9a9a9a';
    else if (o === 'false_peak') colour[o] = '#e6a700';
    else if (o === 'pruned') colour[o] = '#5b7fb5';
    else colour[o] = palette[failedIdx++ % palette.length];
  });
  pts.forEach(function (p) {
    var o = D.outcomes[p[1]], x = X(p[0]), e;
    counts[o] = (counts[o] || 0) + 1;
    if (p[2] === null) {
      e = el('path', {'class': 'pt failed', d: 'M' + (x - 3) + ' ' + (LANE - 3) + 'l6 6m0 -6l-6 6', stroke: colour[o], 'stroke-width': 1.6});
    } else {
      var off = p[2] < lo || p[2] > hi;
      e = el('circle', {'class': 'pt ' + (o === 'kept' ? 'kept' : 'discarded'), cx: x, cy: Y(p[2]), r: o === 'kept' ? 5 : 3,
        fill: off ? 'none' : colour[o], stroke: colour[o], 'stroke-width': off ? 1.2 : 0});
    }
    el('title', {}, e).textContent = '#' + p[0] + ' ' + D.specialists[p[3]] + ': ' + o + (p[2] === null ? '' : ' ' + fmt(p[2]));
  });
  // Kept trials last, on top.
  Array.prototype.forEach.call(svg.querySelectorAll('circle.kept'), function (c) { svg.appendChild(c); });
  Object.keys(counts).forEach(function (o) {
    var s = document.createElement('span');
    s.innerHTML = '<i style="background:' + colour[o] + '"></i>';
    s.appendChild(document.createTextNode(o + ' ' + counts[o]));
    legend.appendChild(s);
  });
  var note = document.createElement('span');
  note.textContent = 'line: running best; shaded: ±' + D.band + ' sd of each incumbent over its runs';
  legend.appendChild(note);
  svg.setAttribute('data-points', String(pts.length));
}

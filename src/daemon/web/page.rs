//! The dashboard's two pages. Each is one HTML file whose script polls the
//! JSON API (`/api/v1/...`) every two seconds and redraws what changed; the
//! progress plot is the HTML report's (`export::PLOT_SCRIPT`).

/// `/`: the progress plot, slots with live curves, specialists, failures.
pub fn dashboard() -> String {
    format!(
        "{HEAD}<title>ratchet</title><style>{}{CSS}</style></head>\n{DASHBOARD_BODY}<script>{}</script>\n<script>{COMMON}{DASHBOARD}</script>\n</body></html>\n",
        crate::export::CSS,
        crate::export::PLOT_SCRIPT
    )
}

/// `/trial/<id>`: one trial, polled until it is terminal.
pub fn trial() -> String {
    format!(
        "{HEAD}<title>ratchet trial</title><style>{}{CSS}</style></head>\n{TRIAL_BODY}<script>{COMMON}{TRIAL}</script>\n</body></html>\n",
        crate::export::CSS
    )
}

const HEAD: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
"#;

/// The dashboard's own style, after the report's (`export::CSS`).
const CSS: &str = r#"
a{color:#1f5fa8}.muted{color:#777}
#conn{float:right;font-size:12px;color:#777}#conn.down{color:#b00020;font-weight:600}
.bar{display:inline-block;width:120px;height:8px;background:#eee;vertical-align:middle;margin-right:6px}
.bar i{display:block;height:8px;background:#5b7fb5}.bar.over i{background:#d62728}
pre{max-width:1100px;white-space:pre-wrap;margin:2px 0}
svg.curve{width:320px;height:120px;border:1px solid #eee}
"#;

const DASHBOARD_BODY: &str = r#"<body>
<span id="conn">connecting</span>
<h1 id="title">ratchet</h1>
<p class="summary" id="summary"></p>
<figure>
<svg id="progress" viewBox="0 0 980 460" role="img" aria-label="progress per trial"></svg>
<figcaption id="legend"></figcaption>
</figure>
<h2>Slots</h2>
<table id="slots"><thead><tr><th>trial</th><th>specialist</th><th>run</th><th>elapsed of budget</th><th>state</th></tr></thead><tbody></tbody></table>
<div id="curves"></div>
<h2>Specialists</h2>
<table id="specialists"><thead><tr><th>specialist</th><th>state</th><th>decided</th><th>kept</th><th>keep rate</th><th>last model reply</th></tr></thead><tbody></tbody></table>
<h2>Recent failures</h2>
<table id="failures"><thead><tr><th>trial</th><th>label</th><th>specialist</th><th>detail and stderr tail</th></tr></thead><tbody></tbody></table>
<p class="muted">Read-only. JSON: <a href="/api/v1/status">/api/v1/status</a>, <a href="/api/v1/trials">/api/v1/trials</a>; Prometheus: <a href="/metrics">/metrics</a>.</p>
"#;

const TRIAL_BODY: &str = r#"<body>
<span id="conn">connecting</span>
<p><a href="/">← dashboard</a></p>
<h1 id="title">trial</h1>
<p class="summary" id="summary"></p>
<h2>Hypothesis</h2><p id="hypothesis"></p>
<h2>Changes</h2><pre id="changes"></pre>
<h2>Diff</h2><pre id="diff"></pre>
<h2>Scores</h2><table id="scores"><tbody></tbody></table>
<h2>History</h2><table id="history"><thead><tr><th>status</th><th>at (UTC)</th></tr></thead><tbody></tbody></table>
<h2>Logs</h2><div id="logs"></div>
"#;

/// Helpers of both pages: fetching JSON, building rows, times.
const COMMON: &str = r#"
function scriptError(message) {
  document.body.setAttribute('data-script-errors', String(message));
}
window.addEventListener('error', function (e) { scriptError(e.message); });
// Network and server errors are `unreachable` (the page says so and goes
// on polling); anything else thrown while drawing is a script error.
function Unreachable(message) { this.message = message; }
function get(url) {
  return fetch(url, {cache: 'no-store'}).then(function (r) {
    if (!r.ok) {
      return r.json().then(function (b) { throw new Unreachable(b.error || String(r.status)); },
                           function () { throw new Unreachable('HTTP ' + r.status); });
    }
    return r.json();
  }, function (e) { throw new Unreachable(e.message); });
}
function failed(e) {
  if (!(e instanceof Unreachable)) scriptError(e && e.stack || e);
  conn(false, e && e.message);
}
function conn(ok, why) {
  var c = document.getElementById('conn');
  c.className = ok ? '' : 'down';
  c.textContent = ok ? 'live · ' + new Date().toLocaleTimeString() : 'not reachable: ' + why;
}
function cell(tr, content) {
  var td = document.createElement('td');
  if (content instanceof Node) td.appendChild(content); else td.textContent = content == null ? '' : String(content);
  tr.appendChild(td);
  return td;
}
function rows(table, items, fill) {
  var body = document.querySelector(table + ' tbody');
  while (body.firstChild) body.removeChild(body.firstChild);
  items.forEach(function (it) { var tr = document.createElement('tr'); fill(tr, it); body.appendChild(tr); });
}
function link(id) {
  var a = document.createElement('a');
  a.href = '/trial/' + id; a.textContent = '#' + id;
  return a;
}
function dur(s) {
  s = Math.max(0, Math.round(s));
  var h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), x = s % 60;
  return (h ? h + 'h' : '') + (h || m ? m + 'm' : '') + x + 's';
}
function num(v) { return v == null ? '-' : String(+v.toPrecision(6)); }
function pre(text) { var p = document.createElement('pre'); p.textContent = text; return p; }
"#;

const DASHBOARD: &str = r#"
var NS = 'http://www.w3.org/2000/svg';
var plot = {epoch: null, next: 0, points: new Map(), incumbents: '', data: null};
var polls = 0;
function pollPlot() {
  var q = plot.epoch === null ? '' : '?epoch=' + plot.epoch + '&after=' + plot.next;
  return get('/api/v1/plot' + q).then(function (d) {
    if (d.epoch !== plot.epoch) { plot.points = new Map(); }
    var changed = d.epoch !== plot.epoch || d.points.length > 0 || JSON.stringify(d.incumbents) !== plot.incumbents;
    plot.epoch = d.epoch; plot.next = d.next; plot.incumbents = JSON.stringify(d.incumbents);
    d.points.forEach(function (p) { plot.points.set(p[0], p); });
    if (changed) {
      var pts = Array.from(plot.points.values()).sort(function (a, b) { return a[0] - b[0]; });
      plot.data = {metric: d.metric, direction: d.direction, band: d.band, outcomes: d.outcomes,
                   specialists: d.specialists, points: pts, incumbents: d.incumbents};
      ratchetPlot(document.getElementById('progress'), document.getElementById('legend'), plot.data);
    }
  });
}
function pollStatus() {
  return get('/api/v1/status').then(function (r) {
    var s = r.status, L = s.live.lineage, E = s.live.executor, now = r.now_ms;
    document.title = 'ratchet: ' + s.experiment;
    document.getElementById('title').textContent = 'ratchet: ' + s.experiment;
    var done = 0; for (var o in L.outcomes) done += L.outcomes[o];
    var inc = L.incumbent ? 'incumbent #' + L.incumbent.trial + ' ' + s.metric + '=' + num(L.incumbent.score) : 'no incumbent yet';
    document.getElementById('summary').textContent = L.trials + ' trials, ' + done + ' finished (' + L.finished_last_hour +
      ' in the last hour), ' + L.keeps + ' keeps · ' + inc + ' · ' + s.metric + ' (' + s.direction + ') · up ' +
      dur((now - s.started_ms) / 1000) + (s.stopping ? ' · draining: ' + s.stopping : '') + (E.draining ? ' · draining' : '');
    var active = {}; s.live.active.forEach(function (t) { active[t.id] = t; });
    var runs = E.running.map(function (r) { return {r: r, state: 'running'}; })
      .concat(E.queued.map(function (r) { return {r: r, state: 'queued'}; }));
    s.live.active.forEach(function (t) {
      if (t.status === 'evaluating') runs.push({r: {trial: t.id, specialist: t.specialist, seed: 0, since_ms: null}, state: 'evaluating'});
    });
    rows('#slots', runs, function (tr, x) {
      var r = x.r;
      cell(tr, link(r.trial)); cell(tr, r.specialist); cell(tr, r.seed ? 'seed run ' + r.seed : 'own run');
      if (x.state === 'running' && r.since_ms) {
        var el = (now - r.since_ms) / 1000, f = s.budget_secs ? el / s.budget_secs : 0;
        var bar = document.createElement('span'); bar.className = 'bar' + (f > 1 ? ' over' : '');
        var i = document.createElement('i'); i.style.width = Math.min(100, f * 100) + '%'; bar.appendChild(i);
        var c = cell(tr, bar); c.appendChild(document.createTextNode(dur(el) + ' of ' + dur(s.budget_secs)));
      } else cell(tr, x.state === 'queued' && r.since_ms ? 'waiting ' + dur((now - r.since_ms) / 1000) : '');
      cell(tr, x.state + (r.job ? ' (job ' + r.job + (r.job_state ? ' ' + r.job_state : '') + ')' : ''));
    });
    document.getElementById('slots').setAttribute('data-running', String(E.running.length));
    rows('#specialists', E.specialists, function (tr, sp) {
      cell(tr, sp.name);
      cell(tr, sp.state + (L.paused[sp.name] ? ' since ' + new Date(L.paused[sp.name]).toISOString().slice(0, 16).replace('T', ' ') : ''));
      cell(tr, sp.outcomes.decided); cell(tr, sp.outcomes.kept);
      cell(tr, sp.outcomes.decided ? (100 * sp.outcomes.kept / sp.outcomes.decided).toFixed(0) + '%' : '-');
      var llm = L.llm[sp.name];
      cell(tr, llm ? dur((now - llm.at_ms) / 1000) + ' ago: ' + llm.detail : '');
    });
    return E.running.length;
  });
}
function curve(svg, series, colour, xs, ys) {
  var d = series.map(function (p, k) { return (k ? 'L' : 'M') + xs(p[0]).toFixed(1) + ' ' + ys(p[1]).toFixed(1); }).join('');
  var path = document.createElementNS(NS, 'path');
  path.setAttribute('d', d); path.setAttribute('fill', 'none'); path.setAttribute('stroke', colour); path.setAttribute('stroke-width', '1.5');
  svg.appendChild(path);
}
function clearCurves() {
  var box = document.getElementById('curves');
  while (box.firstChild) box.removeChild(box.firstChild);
  return box;
}
function pollCurves(running) {
  if (!running) { clearCurves(); return null; }
  return get('/api/v1/progress').then(function (p) {
    var box = clearCurves();
    var inc = p.incumbent ? p.incumbent.curves : {};
    p.runs.forEach(function (run) {
      var names = Object.keys(run.curves);
      if (!names.length) return;
      var name = names.find(function (n) { return inc[n]; }) || names[0];
      var mine = run.curves[name], theirs = inc[name] || [];
      var all = mine.concat(theirs);
      var x0 = Math.min(0, Math.min.apply(null, all.map(function (q) { return q[0]; })));
      var x1 = Math.max.apply(null, all.map(function (q) { return q[0]; }));
      if (!(x1 > x0)) x1 = x0 + 1;
      var lo = Math.min.apply(null, all.map(function (q) { return q[1]; })), hi = Math.max.apply(null, all.map(function (q) { return q[1]; }));
      if (hi <= lo) hi = lo + 1;
      var svg = document.createElementNS(NS, 'svg');
      svg.setAttribute('class', 'curve'); svg.setAttribute('viewBox', '0 0 320 120');
      var xs = function (x) { return 6 + (x - x0) / (x1 - x0) * 308; }, ys = function (y) { return 8 + (hi - y) / (hi - lo) * 100; };
      if (theirs.length) curve(svg, theirs, '#2a9d55', xs, ys);
      curve(svg, mine, '#1f77b4', xs, ys);
      var t = document.createElementNS(NS, 'text'); t.setAttribute('x', 8); t.setAttribute('y', 116); t.setAttribute('font-size', '10');
      t.textContent = '#' + run.trial + ' ' + name + ' ' + num(mine[mine.length - 1][1]) + (theirs.length ? ' (green: incumbent #' + p.incumbent.trial + ')' : '');
      svg.appendChild(t);
      box.appendChild(svg);
    });
  });
}
function pollFailures() {
  return get('/api/v1/failures?limit=8').then(function (r) {
    rows('#failures', r.failures, function (tr, f) {
      cell(tr, link(f.id)); cell(tr, f.label); cell(tr, f.specialist);
      var c = cell(tr, f.detail || '');
      if (f.stderr_tail) c.appendChild(pre(f.stderr_tail.split('\n').slice(-6).join('\n')));
    });
  });
}
function tick() {
  polls++;
  var work = [pollPlot(), pollStatus().then(function (running) { return pollCurves(running); })];
  if (polls % 5 === 1) work.push(pollFailures());
  Promise.all(work).then(function () {
    conn(true);
    document.body.setAttribute('data-polls', String(polls));
  }, failed).then(function () { setTimeout(tick, 2000); });
}
tick();
"#;

const TRIAL: &str = r#"
var id = location.pathname.split('/').pop();
function utc(ms) { return new Date(ms).toISOString().replace('T', ' ').slice(0, 19); }
function show(r) {
  var t = r.trial;
  document.title = 'ratchet: trial #' + t.id;
  document.getElementById('title').textContent = 'Trial #' + t.id + ' · ' + t.specialist + (t.surface ? ' (' + t.surface + ')' : '');
  var outcome = t.label || (t.status === 'kept' ? 'kept' : t.decision || '');
  document.getElementById('summary').textContent = 'status ' + t.status + (outcome ? ' · ' + outcome : '') +
    (t.parent ? ' · parent #' + t.parent : '') + (t.detail ? ' · ' + t.detail : '');
  document.getElementById('hypothesis').textContent = t.hypothesis;
  document.getElementById('changes').textContent = JSON.stringify(t.changes, null, 1);
  document.getElementById('diff').textContent = t.diff || '(none)';
  var scores = [['score', num(t.score)], ['parent score', num(t.parent_score)], ['proxy score', num(t.proxy_score)]];
  [['pre-flight', t.preflight], ['train', t.train], ['eval', t.eval]].forEach(function (p) {
    var r = p[1];
    if (!r) return;
    var m = Object.keys(r.metrics).map(function (k) { return k + '=' + num(r.metrics[k]); }).join(' ');
    scores.push([p[0], 'exit ' + (r.exit_code == null ? (r.signal ? 'signal ' + r.signal : '-') : r.exit_code) + ', ' +
      dur(r.duration_ms / 1000) + (r.timed_out ? ', timed out' : '') + (m ? ' · ' + m : '')]);
  });
  rows('#scores', scores, function (tr, s) { cell(tr, s[0]); cell(tr, s[1]); });
  rows('#history', t.history, function (tr, h) { cell(tr, h.status); cell(tr, utc(h.at_ms)); });
  var logs = document.getElementById('logs');
  while (logs.firstChild) logs.removeChild(logs.firstChild);
  Object.keys(r.logs).forEach(function (name) {
    var h = document.createElement('h3'); h.textContent = name; logs.appendChild(h);
    logs.appendChild(pre(r.logs[name] || '(empty)'));
  });
  return ['kept', 'discarded', 'failed', 'interrupted'].indexOf(t.status) < 0;
}
function tick() {
  get('/api/v1/trials/' + id).then(function (r) {
    conn(true);
    if (show(r)) setTimeout(tick, 3000);
  }).catch(function (e) { failed(e); setTimeout(tick, 5000); });
}
tick();
"#;

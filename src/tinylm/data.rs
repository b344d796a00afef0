//! tinylm's data: byte streams generated deterministically from known
//! processes, so the entropy of each source — and so the floor of the
//! evaluation mix — can be computed exactly. Nothing is downloaded.
//!
//! Splits come from disjoint seeds: training, the trainer's own held-out
//! `select` split (for "best checkpoint" selection), and the evaluator's
//! `proxy` and `full` splits, which training never sees.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::propose::rng::Rng;

/// A generated source of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// Order-2 Markov text over 16 letters and a space, with a fixed sparse transition table.
    Markov,
    /// `a+b=c` lines with a, b uniform in 0..1000: the sum is predictable.
    Arithmetic,
    /// Balanced sequences of `()` and `[]` of length 16: closers are predictable.
    Brackets,
    /// `w|w` lines with w 8 uniform letters: the second half is a copy.
    Copy,
    /// Uniform bytes from a 64-symbol alphabet: nothing to learn.
    Noise,
}

pub const SOURCES: [Source; 5] = [
    Source::Markov,
    Source::Arithmetic,
    Source::Brackets,
    Source::Copy,
    Source::Noise,
];

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Markov => "markov",
            Source::Arithmetic => "arithmetic",
            Source::Brackets => "brackets",
            Source::Copy => "copy",
            Source::Noise => "noise",
        }
    }

    /// Entropy rate in bits per byte (exact for the generating process).
    pub fn entropy_bits_per_byte(self) -> f64 {
        match self {
            Source::Markov => markov_table().entropy_rate(),
            Source::Arithmetic => arithmetic_entropy(),
            Source::Brackets => brackets_entropy(),
            Source::Copy => (COPY_LEN as f64 * 26f64.log2()) / (2 * COPY_LEN + 2) as f64,
            Source::Noise => 6.0,
        }
    }

    /// `n` bytes of this source for a split.
    pub fn generate(self, split: Split, n: usize) -> Vec<u8> {
        let mut rng = Rng::for_name(split.seed(), self.name(), 0x7a11);
        let mut out = Vec::with_capacity(n + 64);
        match self {
            Source::Markov => {
                let table = markov_table();
                let (mut a, mut b) = (rng.below(MARKOV_SYMBOLS), rng.below(MARKOV_SYMBOLS));
                while out.len() < n {
                    let c = table.sample(a, b, &mut rng);
                    out.push(MARKOV_ALPHABET[c]);
                    (a, b) = (b, c);
                }
            }
            Source::Arithmetic => {
                while out.len() < n {
                    let (a, b) = (rng.below(1000), rng.below(1000));
                    out.extend_from_slice(format!("{a}+{b}={}\n", a + b).as_bytes());
                }
            }
            Source::Brackets => {
                while out.len() < n {
                    let mut stack = Vec::new();
                    for r in (1..=BRACKET_LEN).rev() {
                        let close = !stack.is_empty() && (stack.len() == r || rng.unit() < 0.5);
                        if close {
                            out.push(if stack.pop() == Some(b'(') {
                                b')'
                            } else {
                                b']'
                            });
                        } else {
                            let open = if rng.unit() < 0.5 { b'(' } else { b'[' };
                            stack.push(open);
                            out.push(open);
                        }
                    }
                    out.push(b'\n');
                }
            }
            Source::Copy => {
                while out.len() < n {
                    let w: Vec<u8> = (0..COPY_LEN).map(|_| b'a' + rng.below(26) as u8).collect();
                    out.extend_from_slice(&w);
                    out.push(b'|');
                    out.extend_from_slice(&w);
                    out.push(b'\n');
                }
            }
            Source::Noise => {
                const ALPHABET: &[u8; 64] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                while out.len() < n {
                    out.push(ALPHABET[rng.below(64)]);
                }
            }
        }
        out.truncate(n);
        out
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SOURCES
            .iter()
            .copied()
            .find(|src| src.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = SOURCES.iter().map(|s| s.name()).collect();
                format!("unknown source `{s}` (sources: {})", names.join(", "))
            })
    }
}

/// Which data a stream is for. Disjoint seeds: no split sees another's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    /// The trainer's own held-out data, for choosing the best checkpoint.
    Select,
    /// The evaluator's cheap split.
    Proxy,
    /// The evaluator's confirmation split.
    Full,
}

impl Split {
    fn seed(self) -> u64 {
        match self {
            Split::Train => 0x0071_2411,
            Split::Select => 0x005e_1ec7,
            Split::Proxy => 0x9_0c5,
            Split::Full => 0xf_0117,
        }
    }
}

/// Weights per source, as in `[data_mix]` or the eval `--mix`.
pub type Mix = BTreeMap<Source, f64>;

/// Parses `markov=0.4,copy=0.2,...`.
pub fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut mix = Mix::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not source=weight"))?;
        let w: f64 = w
            .trim()
            .parse()
            .map_err(|_| format!("weight `{w}` of {name} is not a number"))?;
        if !(w.is_finite() && w >= 0.0) {
            return Err(format!(
                "weight of {name} must be a finite number >= 0, got {w}"
            ));
        }
        mix.insert(name.trim().parse()?, w);
    }
    if mix.values().sum::<f64>() <= 0.0 {
        return Err("the mix has no positive weight".into());
    }
    Ok(mix)
}

/// The floor of a mix in bits per byte: the weighted entropy of its sources.
/// A lower bound on any model's val_bpb on that mix.
pub fn floor(mix: &Mix) -> f64 {
    let total: f64 = mix.values().sum();
    mix.iter()
        .map(|(s, w)| w / total * s.entropy_bits_per_byte())
        .sum()
}

// ---------------------------------------------------------------------------

const MARKOV_ALPHABET: &[u8; 17] = b"abcdefghijklmnop ";
const MARKOV_SYMBOLS: usize = 17;
const BRACKET_LEN: usize = 16;
const COPY_LEN: usize = 8;

/// The order-2 transition table: for each context, 4 favoured successors with
/// random weights plus a little mass on every symbol.
struct MarkovTable {
    /// probs[a][b][c] = P(c | a, b)
    probs: Vec<Vec<Vec<f64>>>,
}

fn markov_table() -> MarkovTable {
    let mut rng = Rng::new(0x3a7c0);
    let n = MARKOV_SYMBOLS;
    let mut probs = vec![vec![vec![0.0; n]; n]; n];
    for row in probs.iter_mut() {
        for p in row.iter_mut() {
            for x in p.iter_mut() {
                *x = 0.02;
            }
            for _ in 0..4 {
                p[rng.below(n)] += 0.2 + rng.unit();
            }
            let total: f64 = p.iter().sum();
            for x in p.iter_mut() {
                *x /= total;
            }
        }
    }
    MarkovTable { probs }
}

impl MarkovTable {
    fn sample(&self, a: usize, b: usize, rng: &mut Rng) -> usize {
        let p = &self.probs[a][b];
        let mut u = rng.unit();
        for (c, &pc) in p.iter().enumerate() {
            if u < pc {
                return c;
            }
            u -= pc;
        }
        p.len() - 1
    }

    /// Entropy rate: Σ over contexts of π(a,b) H(· | a,b), with π the
    /// stationary distribution of the pair chain (power iteration).
    fn entropy_rate(&self) -> f64 {
        let n = MARKOV_SYMBOLS;
        let mut pi = vec![1.0 / (n * n) as f64; n * n];
        for _ in 0..2000 {
            let mut next = vec![0.0; n * n];
            for a in 0..n {
                for b in 0..n {
                    let m = pi[a * n + b];
                    for c in 0..n {
                        next[b * n + c] += m * self.probs[a][b][c];
                    }
                }
            }
            pi = next;
        }
        let mut h = 0.0;
        for a in 0..n {
            for b in 0..n {
                let ctx: f64 = self.probs[a][b]
                    .iter()
                    .filter(|&&p| p > 0.0)
                    .map(|p| -p * p.log2())
                    .sum();
                h += pi[a * n + b] * ctx;
            }
        }
        h
    }
}

/// Bits per byte of `a+b=c\n` lines: 2·log2(1000) bits over the expected line length.
fn arithmetic_entropy() -> f64 {
    let digits = |x: usize| {
        if x == 0 {
            1
        } else {
            (x as f64).log10().floor() as usize + 1
        }
    };
    let operand: f64 = (0..1000).map(digits).sum::<usize>() as f64 / 1000.0;
    // The sum a+b takes value s with multiplicity min(s, 1998-s)+1.
    let sum: f64 = (0..=1998usize)
        .map(|s| (s.min(1998 - s) + 1) as f64 * digits(s) as f64)
        .sum::<f64>()
        / 1e6;
    2.0 * 1000f64.log2() / (2.0 * operand + sum + 3.0)
}

/// Bits per byte of the bracket lines, from the generator's choices: at depth
/// 0 an opener's type (1 bit); with room to both open and close, open-or-close
/// (1 bit) plus the type when opening (½ bit on average); forced closes: 0.
fn brackets_entropy() -> f64 {
    // prob[d] = probability of being at depth d with r steps left.
    let mut prob = vec![0.0; BRACKET_LEN + 2];
    prob[0] = 1.0;
    let mut bits = 0.0;
    for r in (1..=BRACKET_LEN).rev() {
        let mut next = vec![0.0; BRACKET_LEN + 2];
        for d in 0..=BRACKET_LEN {
            let p = prob[d];
            if p == 0.0 {
                continue;
            }
            if d == 0 {
                bits += p;
                next[1] += p;
            } else if d == r {
                next[d - 1] += p;
            } else {
                bits += p * 1.5;
                next[d - 1] += p * 0.5;
                next[d + 1] += p * 0.5;
            }
        }
        prob = next;
    }
    bits / (BRACKET_LEN + 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_deterministic_and_disjoint() {
        for s in SOURCES {
            let a = s.generate(Split::Train, 4096);
            assert_eq!(a, s.generate(Split::Train, 4096), "{s}");
            assert_ne!(a, s.generate(Split::Proxy, 4096), "{s}");
            assert_eq!(a.len(), 4096);
        }
    }

    #[test]
    fn generated_text_has_the_documented_shape() {
        let arith = String::from_utf8(Source::Arithmetic.generate(Split::Train, 2000)).unwrap();
        for line in arith.lines().take(20) {
            let (lhs, c) = line.split_once('=').unwrap();
            let (a, b) = lhs.split_once('+').unwrap();
            assert_eq!(
                a.parse::<u32>().unwrap() + b.parse::<u32>().unwrap(),
                c.parse::<u32>().unwrap()
            );
        }
        let br = String::from_utf8(Source::Brackets.generate(Split::Train, 2000)).unwrap();
        for line in br.lines().take(50) {
            assert_eq!(line.len(), BRACKET_LEN);
            let mut stack = Vec::new();
            for ch in line.chars() {
                match ch {
                    '(' | '[' => stack.push(ch),
                    ')' => assert_eq!(stack.pop(), Some('(')),
                    ']' => assert_eq!(stack.pop(), Some('[')),
                    _ => panic!("{ch}"),
                }
            }
            assert!(stack.is_empty());
        }
        let copy = String::from_utf8(Source::Copy.generate(Split::Train, 2000)).unwrap();
        for line in copy.lines().take(20) {
            let (a, b) = line.split_once('|').unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn entropies_match_empirical_estimates() {
        // The empirical order-2 conditional entropy of a long Markov stream
        // approaches the computed rate.
        let n = 400_000;
        let s = Source::Markov.generate(Split::Train, n);
        let mut counts: BTreeMap<(u8, u8, u8), f64> = BTreeMap::new();
        let mut ctx: BTreeMap<(u8, u8), f64> = BTreeMap::new();
        for w in s.windows(3) {
            *counts.entry((w[0], w[1], w[2])).or_default() += 1.0;
            *ctx.entry((w[0], w[1])).or_default() += 1.0;
        }
        let total = (n - 2) as f64;
        let h: f64 = counts
            .iter()
            .map(|((a, b, _), c)| -(c / total) * (c / ctx[&(*a, *b)]).log2())
            .sum();
        let exact = Source::Markov.entropy_bits_per_byte();
        assert!((h - exact).abs() < 0.03, "empirical {h} vs exact {exact}");
        assert!(exact > 1.0 && exact < 4.1, "{exact}");

        // Arithmetic: bytes per line measured against the computed expectation.
        let arith = Source::Arithmetic.generate(Split::Train, 1_000_000);
        let lines = arith.iter().filter(|&&b| b == b'\n').count() as f64;
        let measured = 2.0 * 1000f64.log2() * lines / arith.len() as f64;
        assert!((measured - Source::Arithmetic.entropy_bits_per_byte()).abs() < 0.01);

        let b = Source::Brackets.entropy_bits_per_byte();
        assert!(b > 0.5 && b < 1.5, "{b}");
        assert_eq!(Source::Noise.entropy_bits_per_byte(), 6.0);
    }

    #[test]
    fn mixes_parse_and_floor_is_weighted() {
        let m = parse_mix("markov=1, copy=1").unwrap();
        let f = floor(&m);
        let expect =
            (Source::Markov.entropy_bits_per_byte() + Source::Copy.entropy_bits_per_byte()) / 2.0;
        assert!((f - expect).abs() < 1e-12);
        assert!(parse_mix("bogus=1")
            .unwrap_err()
            .contains("unknown source `bogus`"));
        assert!(parse_mix("markov=-1").is_err());
        assert!(parse_mix("markov=0").is_err());
    }
}

//! Encode throughput of the tokenizer, and a check that encoding time grows like n log n.
//!
//!     cargo bench --bench tokenizer_encode
//!
//! Uses the released tokenizer files in `tests/fixtures/hymba-tokenizer`. The texts are made
//! here, deterministically, so the numbers are comparable between runs and machines:
//! English-like prose, a multilingual mix (CJK, Cyrillic, emoji through byte fallback, code), and
//! single "words" without spaces. Llama's tokenizer has no pre-tokenizer, so BPE runs over a
//! whole text at once: the scaling section checks that a 10× longer word costs about 10× (a
//! quadratic merge loop would cost 100×).

use hymba_ref::tokenizer::Tokenizer;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A tiny deterministic pseudo-random generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not",
    "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were",
    "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would",
    "model", "attention", "heads", "state", "space", "hybrid", "language", "small", "parallel", "memory",
    "tokens", "sequence", "layer", "cache", "throughput", "accuracy", "benchmark", "reasoning", "learned",
    "Hymba", "NVIDIA", "Transformer", "Mamba", "efficiently", "recall", "commonsense", "evaluation",
    "understanding", "representation", "architecture", "performance", "1.5B", "2024", "meta-tokens",
];

const MIXED: &[&str] = &[
    "東京は日本の首都です。", "Привет, мир!", "emoji: 🦙🐍🚀", "fn main() { println!(\"hi\"); }",
    "def f(x):\n    return x ** 2\n", "Café, naïve, résumé", "مرحبا بالعالم", "👨‍👩‍👧‍👦 🇯🇵",
    "안녕하세요 세계", "नमस्ते दुनिया", "\t\tindented\n", "x = [1, 2, 3]  # comment",
];

fn prose(bytes: usize, rng: &mut Rng) -> String {
    let mut text = String::with_capacity(bytes + 64);
    let mut sentence_len = 0;
    while text.len() < bytes {
        let word = rng.pick(WORDS);
        if sentence_len == 0 {
            let mut chars = word.chars();
            text.extend(chars.next().map(|c| c.to_ascii_uppercase()));
            text.push_str(chars.as_str());
        } else {
            text.push_str(word);
        }
        sentence_len += 1;
        if sentence_len > 8 && rng.next().is_multiple_of(6) {
            text.push_str(if rng.next().is_multiple_of(5) { ".\n\n" } else { ". " });
            sentence_len = 0;
        } else {
            text.push_str(if rng.next().is_multiple_of(12) { ", " } else { " " });
        }
    }
    text
}

fn mixed(bytes: usize, rng: &mut Rng) -> String {
    let mut text = String::with_capacity(bytes + 64);
    while text.len() < bytes {
        text.push_str(&prose(200, rng));
        text.push(' ');
        text.push_str(rng.pick(MIXED));
        text.push(' ');
    }
    text
}

/// The best of `runs` timings of `f`.
fn best_of(runs: usize, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut out = 0;
    for _ in 0..runs {
        let start = Instant::now();
        out = std::hint::black_box(f());
        best = best.min(start.elapsed());
    }
    (best, out)
}

fn throughput(name: &str, tok: &Tokenizer, text: &str) {
    let (time, tokens) = best_of(3, || tok.encode(text, true).len());
    let mb = text.len() as f64 / 1e6;
    println!(
        "{name:<28} {mb:6.2} MB  {tokens:>9} tokens  {:8.1} ms  {:6.2} MB/s  {:5.2} M tokens/s",
        time.as_secs_f64() * 1e3,
        mb / time.as_secs_f64(),
        tokens as f64 / 1e6 / time.as_secs_f64()
    );
}

fn scaling(name: &str, tok: &Tokenizer, make: impl Fn(usize) -> String) {
    let mut previous: Option<f64> = None;
    for chars in [10_000, 100_000, 1_000_000] {
        let text = make(chars);
        // More runs for short inputs: the best of many is robust against a busy machine.
        let runs = (3_000_000 / chars).clamp(5, 100);
        let (time, tokens) = best_of(runs, || tok.encode(&text, false).len());
        let ms = time.as_secs_f64() * 1e3;
        let ns_per_char = time.as_secs_f64() * 1e9 / chars as f64;
        let ratio = previous.map(|p| format!("  ×{:.1} for 10× the length", ms / p)).unwrap_or_default();
        println!("{name:<24} {chars:>9} chars {tokens:>8} tokens {ms:9.2} ms {ns_per_char:6.0} ns/char{ratio}");
        previous = Some(ms);
    }
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hymba-tokenizer");
    let start = Instant::now();
    let tok = Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json")).expect("tokenizer.json loads");
    println!("load tokenizer.json          {:8.1} ms", start.elapsed().as_secs_f64() * 1e3);
    let start = Instant::now();
    let sp = Tokenizer::from_sentencepiece_model(&dir.join("tokenizer.model")).expect("tokenizer.model loads");
    println!("load tokenizer.model         {:8.1} ms", start.elapsed().as_secs_f64() * 1e3);

    println!("\n== throughput (whole text as one encode call, best of 3)");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let english = prose(8_000_000, &mut rng);
    let multilingual = mixed(4_000_000, &mut rng);
    throughput("english prose", &tok, &english);
    throughput("multilingual + code + emoji", &tok, &multilingual);
    throughput("english prose (.model)", &sp, &english);
    let lines: Vec<&str> = english.lines().collect();
    let (time, _) = best_of(3, || lines.iter().map(|l| tok.encode(l, true).len()).sum());
    let mb = english.len() as f64 / 1e6;
    println!("english prose, per paragraph {mb:6.2} MB  {:>9} calls  {:8.1} ms  {:6.2} MB/s", lines.len(), time.as_secs_f64() * 1e3, mb / time.as_secs_f64());

    println!("\n== scaling: one word (no spaces, so one BPE heap) of growing length; best of 5..100 runs");
    scaling("random letters a-z", &tok, |n| {
        let mut rng = Rng(7);
        (0..n).map(|_| char::from(b'a' + (rng.next() % 26) as u8)).collect()
    });
    scaling("one letter repeated", &tok, |n| "a".repeat(n));
    scaling("spaces", &tok, |n| " ".repeat(n));
    scaling("emoji (byte fallback)", &tok, |n| "🦙".repeat(n));
    println!("-- for comparison, text with spaces (merged word by word)");
    scaling("prose with spaces", &tok, |n| {
        let mut rng = Rng(11);
        prose(n, &mut rng)
    });
}

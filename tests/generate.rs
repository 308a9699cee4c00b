//! Generation on random models: determinism, batched = alone, every stop condition, and greedy
//! decoding checked token by token against full-forward logits.

mod common;

use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::state::cache_plan::{CachePlan, ScalarType};
use hymba_ref::config::HymbaConfig;
use hymba_ref::features::generate::sampling::{argmax, SamplingParams};
use hymba_ref::features::generate::stop::StopChecker;
use hymba_ref::features::generate::{generate, generate_batch, BatchOptions, Flow, GenerateOptions, Generation, StopReason};
use hymba_ref::model::Hymba;
use hymba_ref::ErrorKind;
use serde_json::json;

/// A small model with meta tokens, a sliding window shorter than the generations, a global
/// layer and K/V sharing, so that generation runs through window eviction.
fn small_config() -> serde_json::Value {
    json!({
        "vocab_size": 48, "hidden_size": 16, "num_hidden_layers": 3,
        "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 24,
        "mamba_expand": 2, "mamba_d_state": 4, "mamba_d_conv": 3, "mamba_dt_rank": "auto",
        "num_memory_tokens": 4, "sliding_window": 5, "global_attn_idx": [0],
        "kv_reuse_group": [[1, 2]], "kv_reuse_every_i_layer": -1,
        "rope": true, "rope_type": "ntk", "rope_theta": 10000.0,
        "max_position_embeddings": 256, "orig_max_position_embeddings": 128,
        "kq_norm": "none", "mlp_hidden_act": "silu", "rms_norm_eps": 1e-6,
        "mamba_conv_bias": true, "mamba_proj_bias": false, "mamba_inner_layernorms": true,
        "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
    })
}

fn random_model(seed: u64) -> Hymba {
    let cfg = HymbaConfig::from_json_str(&small_config().to_string()).expect("valid config");
    let weights = HymbaWeights::from_checkpoint(&cfg, &RandomWeights::new(&cfg, seed)).expect("random weights");
    Hymba::new(cfg, weights)
}

fn options(max_new_tokens: usize, stop_at_eos: bool, sampling: SamplingParams) -> GenerateOptions {
    GenerateOptions { max_new_tokens, stop_at_eos, sampling }
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams { temperature: 0.9, top_k: 20, top_p: 0.95, min_p: 0.01, repetition_penalty: 1.1, seed }
}

fn run(model: &Hymba, prompt: &[u32], opts: &GenerateOptions) -> Generation {
    generate(model, prompt, opts, |_| Ok(Flow::Continue)).expect("generation")
}

#[test]
fn same_seed_same_tokens_and_the_callback_sees_each_token() {
    let model = random_model(1);
    let opts = options(24, false, sampled(7));
    let mut streamed = Vec::new();
    let a = generate(&model, &[1, 5, 9], &opts, |id| {
        streamed.push(id);
        Ok(Flow::Continue)
    })
    .unwrap();
    let b = run(&model, &[1, 5, 9], &opts);
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.tokens, streamed);
    assert_eq!(a.tokens.len(), 24);
    assert_eq!(a.stop_reason, StopReason::MaxNewTokens);
    let c = run(&model, &[1, 5, 9], &options(24, false, sampled(8)));
    assert_ne!(a.tokens, c.tokens, "a different seed should give a different sample");
}

#[test]
fn stats_count_tokens_steps_and_cache() {
    let model = random_model(2);
    let g = run(&model, &[1, 2, 3, 4], &options(10, false, SamplingParams::default()));
    let s = g.stats;
    assert_eq!((s.prompt_tokens, s.generated_tokens, s.decode_steps), (4, 10, 9));
    assert!(s.prefill_seconds > 0.0 && s.decode_seconds > 0.0);
    // The cache holds what a fresh sequence fed the same 13 tokens holds.
    let mut seq = model.new_sequence();
    let fed: Vec<u32> = [1, 2, 3, 4].iter().chain(&g.tokens[..9]).copied().collect();
    model.forward_chunk(&fed, &mut seq).unwrap();
    assert_eq!(s.cache_bytes, seq.cache.allocated_scalars().bytes(ScalarType::F32));
    assert!(s.cache_bytes > model.new_sequence().cache.allocated_scalars().bytes(ScalarType::F32));
}

#[test]
fn batched_generation_equals_each_prompt_alone() {
    let model = random_model(3);
    let prompts: Vec<Vec<u32>> = vec![vec![1], vec![1, 7, 7, 7, 30], (0..20).collect(), vec![1, 47, 3]];
    // All at once; two at a time (the others join as the first leave); under a cache bound
    // that admits two of the longest.
    let two_longest = 2 * CachePlan::new(&model.config, 20 + 16).unwrap().size.bytes(ScalarType::F32);
    let batchings = [
        BatchOptions::default(),
        BatchOptions { max_batch: 2, max_cache_bytes: None },
        BatchOptions { max_batch: usize::MAX, max_cache_bytes: Some(two_longest) },
    ];
    for sampling in [SamplingParams::default(), sampled(11)] {
        let opts = options(16, true, sampling);
        for batching in batchings {
            let (batch, stats) = generate_batch(&model, &prompts, &opts, &batching, |_| |_| Ok(Flow::Continue));
            assert_eq!(batch.len(), prompts.len());
            assert!(stats.peak_batch >= 2 && stats.peak_batch <= batching.max_batch.min(4), "{batching:?}: {stats:?}");
            assert!(stats.peak_cache_bytes <= batching.max_cache_bytes.unwrap_or(usize::MAX), "{batching:?}: {stats:?}");
            let mut tokens = 0;
            for (prompt, got) in prompts.iter().zip(batch) {
                let got = got.unwrap();
                let alone = run(&model, prompt, &opts);
                assert_eq!(got.tokens, alone.tokens, "prompt {prompt:?}, {batching:?}");
                assert_eq!(got.stop_reason, alone.stop_reason);
                assert_eq!(got.stats.cache_bytes, alone.stats.cache_bytes);
                assert_eq!(got.stats.decode_steps, alone.stats.decode_steps);
                tokens += got.tokens.len();
            }
            assert_eq!(stats.generated_tokens, tokens);
            assert!(stats.peak_cache_bytes > 0);
        }
    }
}

#[test]
fn batched_generation_reports_each_prompts_error_in_place() {
    let model = random_model(3);
    let prompts = vec![vec![1, 2], vec![], vec![1, 48]];
    let (results, _) = generate_batch(&model, &prompts, &options(3, true, SamplingParams::default()), &BatchOptions::default(), |_| {
        |_| Ok(Flow::Continue)
    });
    assert!(results[0].is_ok());
    assert_eq!(results[1].as_ref().unwrap_err().kind, ErrorKind::InvalidInput);
    assert_eq!(results[2].as_ref().unwrap_err().kind, ErrorKind::TokenIdOutOfRange);
}

#[test]
fn eos_ends_generation_unless_disabled() {
    let mut model = random_model(4);
    let free = run(&model, &[1, 10, 20], &options(12, false, SamplingParams::default()));
    // Make the 6th greedy token the EOS token: generation stops right before it.
    let eos = free.tokens[5];
    let first = free.tokens.iter().position(|&t| t == eos).unwrap();
    assert!(first > 0, "the test wants some tokens before EOS: {:?}", free.tokens);
    model.config.eos_token_id = Some(eos);
    let stopped = run(&model, &[1, 10, 20], &options(12, true, SamplingParams::default()));
    assert_eq!(stopped.stop_reason, StopReason::Eos);
    assert_eq!(stopped.tokens, free.tokens[..first]);
    let ignored = run(&model, &[1, 10, 20], &options(12, false, SamplingParams::default()));
    assert_eq!(ignored.tokens, free.tokens);
}

#[test]
fn max_new_tokens_bounds_the_output() {
    let model = random_model(5);
    let opts = |n| options(n, false, sampled(1));
    let long = run(&model, &[1, 4], &opts(9));
    for n in [0, 1, 5] {
        let g = run(&model, &[1, 4], &opts(n));
        assert_eq!(g.tokens, long.tokens[..n]);
        assert_eq!(g.stop_reason, StopReason::MaxNewTokens);
        assert_eq!(g.stats.decode_steps, n.saturating_sub(1));
    }
}

/// Stop strings on top of the id loop: ids shown as letters, checked by a [`StopChecker`].
#[test]
fn a_stop_string_ends_generation_and_is_not_emitted() {
    let model = random_model(6);
    let letter = |id: u32| char::from(b'a' + (id % 26) as u8).to_string();
    let opts = options(20, false, sampled(2));
    let free = run(&model, &[1, 3], &opts);
    let text: String = free.tokens.iter().map(|&t| letter(t)).collect();
    let stop = text[6..9].to_string();
    let at = text.find(&stop).unwrap();
    assert!(at > 0, "the test wants some text before the stop string: {text}");

    let mut checker = StopChecker::new(vec![stop.clone()]).unwrap();
    let mut shown = String::new();
    let g = generate(&model, &[1, 3], &opts, |id| {
        let out = checker.push(&letter(id));
        shown.push_str(&out.text);
        Ok(if out.stopped { Flow::Stop } else { Flow::Continue })
    })
    .unwrap();
    assert_eq!(g.stop_reason, StopReason::Callback);
    assert_eq!(shown, text[..at]);
    assert_eq!(g.tokens, free.tokens[..at + 3], "generation stops at the token completing {stop:?}");
}

#[test]
fn a_callback_error_aborts_generation() {
    let model = random_model(6);
    let err = generate(&model, &[1], &options(5, false, SamplingParams::default()), |_| {
        Err(hymba_ref::Error::input("broken pipe"))
    })
    .unwrap_err();
    assert_eq!(err.message, "broken pipe");
}

#[test]
fn invalid_sampling_parameters_are_refused_before_running() {
    let model = random_model(6);
    let bad = SamplingParams { top_p: 0.0, ..SamplingParams::default() };
    let err = generate(&model, &[1], &options(5, false, bad), |_| Ok(Flow::Continue)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
}

/// Greedy decoding through the cache picks, at every step, the argmax of the full forward pass
/// over the prompt and the tokens before it (teacher forcing), well past M + W positions.
#[test]
fn greedy_generation_is_the_argmax_of_full_forward_logits() {
    for seed in [7, 8, 9] {
        let model = random_model(seed);
        let prompt = [1, 17, 33, 8, 41];
        let g = run(&model, &prompt, &options(30, false, SamplingParams::default()));
        let all: Vec<u32> = prompt.iter().chain(&g.tokens).copied().collect();
        let full = model.forward(&all).unwrap(); // (n, V)
        for (i, &token) in g.tokens.iter().enumerate() {
            let row = full.row(prompt.len() - 1 + i);
            assert_eq!(token, argmax(row.as_slice().unwrap()), "seed {seed}, step {i}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The `generate` command, on a random checkpoint written to disk with the released tokenizer.
// ---------------------------------------------------------------------------------------------

mod cli {
    use super::*;
    use hymba_ref::checkpoint::safetensors::write_f32;
    use hymba_ref::checkpoint::TensorSource;
    use hymba_ref::features::generate::text::generate_text;
    use hymba_ref::tokenizer::{render_chat, ChatMessage, Role, Tokenizer};
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Output, Stdio};
    use std::sync::OnceLock;

    /// The random checkpoints the command runs on: a tiny model with the released vocabulary
    /// size (32001) and tokenizer, the same without tokenizer files, and one whose vocabulary
    /// is one id short of the tokenizer's (so `[PAD]`, id 32000, is out of its range).
    #[derive(Clone, Copy)]
    enum Ckpt {
        Full,
        NoTokenizer,
        /// `tokenizer_config.json` says `add_bos_token: false`, so an empty prompt would be no ids.
        NoBos,
    }

    /// The checkpoint directory (config.json + model.safetensors, tokenizer files unless
    /// `NoTokenizer`), written once per test binary.
    fn checkpoint(kind: Ckpt) -> &'static Path {
        static DIRS: [OnceLock<PathBuf>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        DIRS[kind as usize].get_or_init(|| {
            let (name, vocab) = match kind {
                Ckpt::Full => ("generate-cli-model", 32001),
                Ckpt::NoTokenizer => ("generate-cli-model-no-tokenizer", 32001),
                Ckpt::NoBos => ("generate-cli-model-no-bos", 32001),
            };
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let mut config = small_config();
            config["vocab_size"] = json!(vocab);
            std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
            let cfg = HymbaConfig::from_json_str(&config.to_string()).unwrap();
            let source = RandomWeights::new(&cfg, 21);
            let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = source
                .names()
                .into_iter()
                .map(|name| {
                    let (shape, data) = source.to_f32(&name).unwrap();
                    (name, shape, data)
                })
                .collect();
            let views: Vec<(&str, &[usize], &[f32])> =
                tensors.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
            write_f32(&dir.join("model.safetensors"), &views).unwrap();
            if !matches!(kind, Ckpt::NoTokenizer) {
                let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hymba-tokenizer");
                for file in ["tokenizer.json", "tokenizer_config.json"] {
                    std::fs::copy(fixtures.join(file), dir.join(file)).unwrap();
                }
                if matches!(kind, Ckpt::NoBos) {
                    let path = dir.join("tokenizer_config.json");
                    let mut config: serde_json::Value =
                        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                    config["add_bos_token"] = json!(false);
                    std::fs::write(&path, config.to_string()).unwrap();
                }
            }
            dir
        })
    }

    fn model() -> &'static Hymba {
        static MODEL: OnceLock<Hymba> = OnceLock::new();
        MODEL.get_or_init(|| Hymba::from_dir(checkpoint(Ckpt::Full)).unwrap())
    }

    fn tokenizer() -> &'static Tokenizer {
        static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
        TOKENIZER.get_or_init(|| Tokenizer::from_dir(checkpoint(Ckpt::Full)).unwrap())
    }

    fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
        let mut child = common::cli_command()
            .arg("generate")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    fn run(args: &[&str]) -> Output {
        run_with_stdin(args, b"")
    }

    /// `generate --model <random checkpoint> args...`, which must succeed: its stdout.
    fn generate_ok(args: &[&str]) -> String {
        let dir = checkpoint(Ckpt::Full).to_str().unwrap();
        let out = run(&[&["--model", dir], args].concat());
        assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn stderr(out: &Output) -> String {
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The library's text for `prompt`, as the command should print it.
    fn library_text(prompt: &str, opts: &GenerateOptions, stops: &[String]) -> String {
        let ids = tokenizer().encode(prompt, true);
        let mut text = String::new();
        generate_text(model(), tokenizer(), &ids, opts, stops, |piece| {
            text.push_str(piece);
            Ok(())
        })
        .unwrap();
        text
    }

    #[test]
    fn a_text_prompt_streams_the_librarys_text_and_reports_timings() {
        let dir = checkpoint(Ckpt::Full).to_str().unwrap();
        let out = run(&["--model", dir, "--prompt", "Hello world", "--max-new-tokens", "12"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let want = library_text("Hello world", &options(12, true, SamplingParams::default()), &[]);
        assert_eq!(String::from_utf8(out.stdout.clone()).unwrap(), want + "\n");
        let err = stderr(&out);
        for needle in ["prefill: 3 tokens", "tok/s", "decode: ", "cache: ", "bytes"] {
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    #[test]
    fn stdin_is_the_prompt_without_its_final_newline() {
        let dir = checkpoint(Ckpt::Full).to_str().unwrap();
        let out = run_with_stdin(&["--model", dir, "--max-new-tokens", "6"], b"Hello world\n");
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(String::from_utf8(out.stdout).unwrap(), generate_ok(&["--prompt", "Hello world", "--max-new-tokens", "6"]));
    }

    #[test]
    fn ids_in_ids_out_needs_no_tokenizer() {
        let dir = checkpoint(Ckpt::NoTokenizer).to_str().unwrap();
        let out = run(&["--model", dir, "--ids", "1,15043,3186", "--print-ids", "--max-new-tokens", "7", "--no-eos-stop"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let want = run_lib(&[1, 15043, 3186], &options(7, false, SamplingParams::default()));
        assert_eq!(String::from_utf8(out.stdout.clone()).unwrap(), serde_json::to_string(&want.tokens).unwrap() + "\n");
        let err = stderr(&out);
        for needle in ["prefill: 3 tokens", "decode: 6 steps", "generated 7 tokens, stopped by max new tokens"] {
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    fn run_lib(prompt: &[u32], opts: &GenerateOptions) -> Generation {
        super::run(model(), prompt, opts)
    }

    #[test]
    fn sampling_flags_reach_the_sampler_and_the_seed_repeats() {
        let flags = ["--temperature", "0.8", "--top-k", "40", "--top-p", "0.9", "--min-p", "0.02", "--repetition-penalty", "1.2"];
        let args = |seed: &'static str| [&["--ids", "1,15043", "--print-ids", "--max-new-tokens", "10", "--seed", seed][..], &flags].concat();
        let a = generate_ok(&args("5"));
        assert_eq!(a, generate_ok(&[&args("5")[..], &["--threads", "1"]].concat()));
        let sampling = SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.9, min_p: 0.02, repetition_penalty: 1.2, seed: 5 };
        let want = run_lib(&[1, 15043], &options(10, true, sampling));
        assert_eq!(a, serde_json::to_string(&want.tokens).unwrap() + "\n");
    }

    #[test]
    fn chat_and_system_render_the_instruct_format() {
        let got = generate_ok(&["--system", "Be brief.", "--prompt", "Hi there", "--print-ids", "--max-new-tokens", "5"]);
        let rendered = render_chat(
            &[ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, "Hi there")],
            true,
        );
        let want = run_lib(&tokenizer().encode(&rendered, true), &options(5, true, SamplingParams::default()));
        assert_eq!(got, serde_json::to_string(&want.tokens).unwrap() + "\n");
        let chat_only = generate_ok(&["--chat", "--prompt", "Hi there", "--print-ids", "--max-new-tokens", "5"]);
        let rendered = render_chat(&[ChatMessage::new(Role::User, "Hi there")], true);
        let want = run_lib(&tokenizer().encode(&rendered, true), &options(5, true, SamplingParams::default()));
        assert_eq!(chat_only, serde_json::to_string(&want.tokens).unwrap() + "\n");
        // The released tokenizer_config.json has a chat template: no warning that it is not one.
        let dir = checkpoint(Ckpt::Full).to_str().unwrap();
        let out = run(&["--model", dir, "--chat", "--prompt", "Hi there", "--max-new-tokens", "2"]);
        assert!(out.status.success() && !stderr(&out).contains("chat template"), "{}", stderr(&out));
    }

    #[test]
    fn a_stop_string_cuts_the_output() {
        let opts = options(24, false, SamplingParams::default());
        let free = library_text("Once upon a time", &opts, &[]);
        let chars: Vec<char> = free.chars().collect();
        assert!(chars.len() >= 12, "the test wants a longer text: {free:?}");
        let stop: String = chars[8..11].iter().collect();
        let want = &free[..free.find(&stop).unwrap()];
        let got = generate_ok(&["--prompt", "Once upon a time", "--max-new-tokens", "24", "--no-eos-stop", "--stop", "zzzq", &stop]);
        assert_eq!(got, format!("{want}\n"));
    }

    #[test]
    fn a_prompts_file_is_decoded_as_a_batch_and_prints_each_prompt_as_alone_in_order() {
        let prompts = ["Hello world", "The capital of France is", "A", "1, 2, 3,"];
        let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("generate-prompts.txt");
        std::fs::write(&file, prompts.join("\n") + "\n").unwrap();
        let file = file.to_str().unwrap();
        let flags = ["--max-new-tokens", "8", "--temperature", "0.7", "--seed", "3", "--threads", "2"];
        let got = generate_ok(&[&["--prompts-file", file][..], &flags].concat());
        let mut want = String::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let alone = generate_ok(&[&["--prompt", prompt][..], &flags].concat());
            want.push_str(&format!("=== prompt {} ===\n{alone}", i + 1));
        }
        assert_eq!(got, want);
        // Two at a time, and under a cache bound that admits one at a time: the same output.
        for bound in [&["--batch-size", "2"][..], &["--max-cache-gb", "0.000001"]] {
            assert_eq!(generate_ok(&[&["--prompts-file", file][..], bound, &flags].concat()), want, "{bound:?}");
        }
        let ids = generate_ok(&[&["--prompts-file", file, "--print-ids"][..], &flags].concat());
        assert_eq!(ids.lines().count(), prompts.len());
        // The summary line: aggregate speed, the batch size reached, the peak cache.
        let dir = checkpoint(Ckpt::Full).to_str().unwrap();
        let out = run(&[&["--model", dir, "--prompts-file", file, "--batch-size", "3"][..], &flags].concat());
        let summary = stderr(&out).lines().last().unwrap_or_default().to_string();
        assert!(summary.starts_with("batch: 4 prompts, ") && summary.contains("tok/s overall"), "{summary}");
        assert!(summary.contains("up to 3 sequences at once") && summary.contains("peak cache: "), "{summary}");
    }

    #[test]
    fn usage_errors_exit_with_code_2() {
        let dir = checkpoint(Ckpt::Full).to_str().unwrap();
        let cases: [(&[&str], &str); 8] = [
            (&["--model", dir, "--prompt", "x", "--batch-size", "2"], "--batch-size"),
            (&["--model", dir, "--prompts-file", "f", "--batch-size", "0"], "--batch-size"),
            (&["--bogus"], "--bogus"),
            (&["--model", dir, "--temperature", "-1", "--prompt", "x"], "--temperature"),
            (&["--model", dir, "--top-p", "0", "--prompt", "x"], "--top-p"),
            (&["--model", dir, "--min-p", "2", "--prompt", "x"], "--min-p"),
            (&["--model", dir, "--threads", "0", "--prompt", "x"], "--threads"),
            (&["--model", dir, "--prompt", "x", "--ids", "1"], "--ids"),
        ];
        for (args, needle) in cases {
            let out = run(args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains(needle), "{needle:?} not in {}", stderr(&out));
        }
    }

    #[test]
    fn bad_input_exits_with_code_1_and_bad_flag_values_with_2_naming_the_problem() {
        let dir = checkpoint(Ckpt::Full).to_str().unwrap();
        let no_tokenizer = checkpoint(Ckpt::NoTokenizer).to_str().unwrap();
        let empty = Path::new(env!("CARGO_TARGET_TMPDIR")).join("generate-no-prompts.txt");
        std::fs::write(&empty, "").unwrap();
        let empty = empty.to_str().unwrap();
        let cases: [(&[&str], &str, i32); 7] = [
            (&["--model", "/nonexistent-hymba-model", "--prompt", "x"], "/nonexistent-hymba-model does not exist", 1),
            (&["--model", dir, "--prompts-file", empty], "holds no prompts", 1),
            (&["--model", dir, "--ids", "1,x,3"], "'--ids <IDS>': entry 2 is \"x\"", 2),
            (&["--model", dir, "--ids", ""], "'--ids <IDS>': the token id list is empty", 2),
            (&["--model", dir, "--ids", "1,32001", "--print-ids"], "32001", 1),
            (&["--model", no_tokenizer, "--prompt", "x"], "tokenizer", 1),
            (&["--model", dir, "--prompts-file", "/nonexistent-prompts.txt"], "/nonexistent-prompts.txt", 1),
        ];
        for (args, needle, code) in cases {
            let out = run(args);
            assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains(needle), "{needle:?} not in {}", stderr(&out));
        }
    }

    #[test]
    fn non_utf8_input_is_refused() {
        let dir = checkpoint(Ckpt::Full).to_str().unwrap();
        let out = run_with_stdin(&["--model", dir], b"caf\xe9\n");
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("stdin is not valid UTF-8"), "{}", stderr(&out));
        let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("generate-latin1.txt");
        std::fs::write(&file, b"ok\ncaf\xe9\n").unwrap();
        let out = run(&["--model", dir, "--prompts-file", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("is not valid UTF-8 (invalid byte at offset 6)"), "{}", stderr(&out));
    }

    #[test]
    fn an_empty_prompt_is_an_error_naming_where_it_came_from() {
        // Without a BOS an empty prompt would be no ids at all; with one, a continuation of BOS
        // alone that nobody asked for. Either way it is refused before anything is generated:
        // --prompt (a usage error), stdin, line K of --prompts-file. --ids 1 asks for BOS alone.
        let dir = checkpoint(Ckpt::NoBos).to_str().unwrap();
        let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("generate-one-empty-prompt.txt");
        std::fs::write(&file, "Hello\n \nworld\n").unwrap();
        let file = file.to_str().unwrap();
        let cases: [(&[&str], &[u8], i32, &str); 4] = [
            (&["--prompts-file", file], b"", 1, "generate-one-empty-prompt.txt line 2: the prompt is empty"),
            (&["--prompt", ""], b"", 2, "--prompt \"\": the prompt is empty"),
            (&["--prompt", " \t"], b"", 2, "--prompt \" \\t\": the prompt is empty"),
            (&[], b"\n", 1, "the prompt read from stdin is empty"),
        ];
        for (args, stdin, code, needle) in cases {
            let out = run_with_stdin(&[&["--model", dir, "--max-new-tokens", "3"], args].concat(), stdin);
            assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains(needle), "{needle:?} not in {}", stderr(&out));
            assert!(out.stdout.is_empty(), "{args:?} generated {:?}", String::from_utf8_lossy(&out.stdout));
        }
        let out = run(&["--model", checkpoint(Ckpt::Full).to_str().unwrap(), "--ids", "1", "--max-new-tokens", "2", "--print-ids"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
}

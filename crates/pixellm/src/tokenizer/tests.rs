//! Conformance tests against the kit fixtures and the real LLaMA tokenizer vectors.

use super::sentencepiece::ModelProto;
use super::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(p: PathBuf) -> Value {
    serde_json::from_slice(&read(p)).unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

const CASES: [&str; 2] = ["p1_landscape_480x360", "p2_portrait_300x500"];

fn case(name: &str) -> Value {
    json(
        fixtures()
            .join("conformance/cases")
            .join(name)
            .join("case.json"),
    )
}

fn kit_tokenizers() -> Vec<(&'static str, Tokenizer)> {
    let root = fixtures().join("conformance");
    let json_tok = Tokenizer::from_dir(&root.join("checkpoint")).unwrap();
    let model_tok = Tokenizer::from_dir(&root.join("checkpoint-bin")).unwrap();
    assert_eq!(json_tok.source(), TokenizerSource::TokenizerJson);
    assert_eq!(model_tok.source(), TokenizerSource::SentencePiece);
    vec![("checkpoint", json_tok), ("checkpoint-bin", model_tok)]
}

/// The real 32000-piece tokenizer, through tokenizer.model and through tokenizer.json.
fn llama_tokenizers(added: Option<&[u8]>) -> Vec<(&'static str, Tokenizer)> {
    let dir = fixtures().join("llama-tokenizer");
    let model = read(dir.join("tokenizer.model"));
    let tj = read(dir.join("tokenizer.json"));
    let by_model = Tokenizer::from_bytes(&model, None, added).unwrap();
    let by_json = Tokenizer::from_bytes(&[], Some(&tj), added).unwrap();
    assert_eq!(by_model.source(), TokenizerSource::SentencePiece);
    assert_eq!(by_json.source(), TokenizerSource::TokenizerJson);
    vec![("tokenizer.model", by_model), ("tokenizer.json", by_json)]
}

fn tokens(tok: &Tokenizer, ids: &[i64]) -> Vec<String> {
    ids.iter()
        .map(|&id| match id {
            IMAGE_TOKEN_INDEX => "<IMAGE:-200>".to_string(),
            _ => tok.id_to_piece(id).unwrap().to_string(),
        })
        .collect()
}

#[test]
fn kit_cases_prompt_and_teacher_forced_ids() {
    for (label, tok) in kit_tokenizers() {
        for name in CASES {
            let c = case(name);
            let q = c["question"].as_str().unwrap();
            let prompt = llava_v1_prompt(q, None);
            assert_eq!(prompt, c["prompt"].as_str().unwrap());
            let got = tok.encode_with_image(&prompt);
            assert_eq!(got, ids(&c["input_ids"]), "{label} {name} prompt");
            let want_tokens: Vec<String> = c["input_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            assert_eq!(tokens(&tok, &got), want_tokens, "{label} {name} tokens");

            let tf = &c["teacher_forced"];
            let full = llava_v1_prompt(q, Some(tf["answer"].as_str().unwrap()));
            assert_eq!(full, tf["prompt"].as_str().unwrap());
            let got = tok.encode_with_image(&full);
            assert_eq!(got, ids(&tf["input_ids"]), "{label} {name} teacher-forced");
            let seg: Vec<i64> = got
                .iter()
                .copied()
                .filter(|i| (1000..=1005).contains(i))
                .collect();
            assert_eq!(seg, ids(&tf["seg_token_ids_in_order"]), "{label} {name}");
        }
    }
}

#[test]
fn kit_special_ids() {
    for (label, tok) in kit_tokenizers() {
        assert_eq!(
            tok.seg_token_ids(),
            vec![1000, 1001, 1002, 1003, 1004, 1005],
            "{label}"
        );
        assert_eq!(tok.id_of("<im_start>"), Some(1006));
        assert_eq!(tok.id_of("<im_end>"), Some(1007));
        assert_eq!(tok.id_of("<s>"), Some(1));
        assert_eq!(tok.id_of("no such piece"), None);
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.unk_id()), (1, 2, 0));
        assert_eq!(tok.vocab_size(), 1008);
        assert_eq!(tok.base_vocab_size(), 1000);
        assert_eq!(tok.added_tokens().len(), 8);
    }
}

#[test]
fn kit_whitespace_rules() {
    for (label, tok) in kit_tokenizers() {
        let (s0, s1, s5) = (1000, 1001, 1005);
        // Added tokens strip all whitespace (newlines too) on both sides.
        assert_eq!(
            tok.encode("[SEG0] \n [SEG1]", false),
            vec![s0, s1],
            "{label}"
        );
        // "[SEG5]." → [SEG5], ▁, . : the chunk gets its own dummy prefix.
        let dot = tok.encode(".", false);
        assert_eq!(
            tok.encode("[SEG5].", false),
            [vec![s5], dot.clone()].concat()
        );
        // </s> strips nothing: ".</s>" → ".", "</s>" and " </s>" keeps its space.
        assert_eq!(tok.encode(".</s>", false), [dot, vec![2]].concat());
        assert_eq!(
            tok.encode(" </s>", false),
            [tok.encode(" ", false), vec![2]].concat()
        );
        // add_special_tokens only adds BOS.
        assert_eq!(tok.encode("", true), vec![1]);
        assert_eq!(tok.encode("", false), Vec::<i64>::new());
        assert!(!tok.encode(" \t ", false).is_empty());
        assert_eq!(tok.encode("\u{3000}[SEG0]\u{1c}", false), vec![s0]);
    }
}

#[test]
fn llama_test_vectors() {
    let v = json(fixtures().join("llama-tokenizer/test_vectors.json"));
    let vectors = v["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 58);
    for (label, tok) in llama_tokenizers(None) {
        let mut failures = Vec::new();
        for vec in vectors {
            let text = vec["text"].as_str().unwrap();
            let add = vec["add_special_tokens"].as_bool().unwrap();
            let got = tok.encode(text, add);
            if got != ids(&vec["ids"]) {
                failures.push(format!("{text:?}: got {got:?} want {:?}", vec["ids"]));
            }
        }
        assert!(failures.is_empty(), "{label}: {}", failures.join("\n"));
    }
}

#[test]
fn real_llama_tokenizer_prompt_ids() {
    // Added tokens appended as case.json's note says: [SEG0..5], <im_start>, <im_end>.
    let added = br#"{"[SEG0]": 32000, "[SEG1]": 32001, "[SEG2]": 32002, "[SEG3]": 32003,
        "[SEG4]": 32004, "[SEG5]": 32005, "<im_start>": 32006, "<im_end>": 32007}"#;
    for (label, tok) in llama_tokenizers(Some(added)) {
        assert_eq!(tok.vocab_size(), 32008);
        for name in CASES {
            let c = case(name);
            let real = &c["real_llama_tokenizer"];
            let q = c["question"].as_str().unwrap();
            let got = tok.encode_with_image(&llava_v1_prompt(q, None));
            assert_eq!(got, ids(&real["prompt_input_ids"]), "{label} {name}");
            let answer = c["teacher_forced"]["answer"].as_str().unwrap();
            let got = tok.encode_with_image(&llava_v1_prompt(q, Some(answer)));
            assert_eq!(
                got,
                ids(&real["teacher_forced_input_ids"]),
                "{label} {name}"
            );
            let want_tokens: Vec<String> = real["teacher_forced_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            assert_eq!(tokens(&tok, &got), want_tokens, "{label} {name}");
        }
    }
}

/// Small deterministic generator (xorshift64*), so the tests need no new dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn random_text(rng: &mut Rng, specials: &[&str]) -> String {
    const ALPHABET: &[&str] = &[
        "a", "b", "e", "t", "h", " ", " ", "  ", "\n", "\t", ".", ",", "3", "the", "The", " the",
        "é", "ü", "ß", "😀", "🦙", "中", "文", "\u{2581}", "\u{3000}", "\u{a0}", "\u{200d}", "<",
        ">", "[", "]", "SEG", "im_start", "'s", "ing", "\r\n", "\u{1c}",
    ];
    let n = rng.below(40);
    let mut s = String::new();
    for _ in 0..n {
        if !specials.is_empty() && rng.below(8) == 0 {
            s.push_str(specials[rng.below(specials.len())]);
        } else {
            s.push_str(ALPHABET[rng.below(ALPHABET.len())]);
        }
    }
    s
}

#[test]
fn json_and_model_backends_agree_on_random_text() {
    let specials = [
        "[SEG0]",
        "[SEG3]",
        "<im_start>",
        "<im_end>",
        "<s>",
        "</s>",
        "<unk>",
        "<image>",
    ];
    let added = br#"{"[SEG0]": 32000, "[SEG1]": 32001, "[SEG2]": 32002, "[SEG3]": 32003,
        "[SEG4]": 32004, "[SEG5]": 32005, "<im_start>": 32006, "<im_end>": 32007}"#;
    let sets = [kit_tokenizers(), llama_tokenizers(Some(added))];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for set in &sets {
        let (a, b) = (&set[0].1, &set[1].1);
        for _ in 0..400 {
            let text = random_text(&mut rng, &specials);
            assert_eq!(a.encode(&text, true), b.encode(&text, true), "{text:?}");
            assert_eq!(
                a.encode_with_image(&text),
                b.encode_with_image(&text),
                "{text:?}"
            );
        }
    }
}

#[test]
fn long_prompt_is_fast_and_consistent() {
    let [(_, a), (_, b)]: [(&str, Tokenizer); 2] = llama_tokenizers(None).try_into().ok().unwrap();
    let para = "The llama is a domesticated South American camelid, 🦙 widely used as a meat \
                and pack animal by Andean cultures since the pre-Columbian era.\n";
    let text = para.repeat(300); // ~45 kB, one sentencepiece chunk
    let start = std::time::Instant::now();
    let ids = a.encode(&text, true);
    assert_eq!(ids, b.encode(&text, true));
    assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
    assert_eq!(a.decode(&ids), text);
    // A chunk without spaces exercises long merge chains.
    let word = "ab".repeat(20_000);
    assert_eq!(a.encode(&word, false), b.encode(&word, false));
}

#[test]
fn garbage_model_is_an_error_not_a_panic() {
    let err = Tokenizer::from_bytes(b"this is not a protobuf at all", None, None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("not a sentencepiece ModelProto"), "{msg}");
    assert!(matches!(err, Error::Format { .. }));
    // A JSON file handed over as tokenizer.model.
    let cfg = read(fixtures().join("conformance/checkpoint/tokenizer_config.json"));
    assert!(Tokenizer::from_bytes(&cfg, None, None).is_err());
    // Broken tokenizer.json is reported, not silently replaced.
    let model = read(fixtures().join("conformance/checkpoint/tokenizer.model"));
    assert!(Tokenizer::from_bytes(&model, Some(b"{not json"), None).is_err());
    // Added ids that do not continue the base vocabulary are refused, like transformers.
    assert!(Tokenizer::from_bytes(&model, None, Some(br#"{"[SEG0]": 5}"#)).is_err());
    assert!(Tokenizer::from_bytes(&model, None, Some(b"[1, 2]")).is_err());
}

#[test]
fn unsupported_json_layout_falls_back_to_model() {
    let dir = fixtures().join("conformance/checkpoint");
    let model = read(dir.join("tokenizer.model"));
    let mut tj = json(dir.join("tokenizer.json"));
    tj["pre_tokenizer"] = serde_json::json!({"type": "Metaspace", "replacement": "\u{2581}"});
    let tj = serde_json::to_vec(&tj).unwrap();
    let added = read(dir.join("added_tokens.json"));
    let tok = Tokenizer::from_bytes(&model, Some(&tj), Some(&added)).unwrap();
    assert_eq!(tok.source(), TokenizerSource::SentencePiece);
    let err = Tokenizer::from_bytes(&[], Some(&tj), Some(&added)).unwrap_err();
    assert!(err.to_string().contains("Metaspace"), "{err}");
}

#[test]
fn fuzz_protobuf_reader_never_panics() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for _ in 0..3000 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = ModelProto::parse(&bytes, "fuzz");
        if let Ok(tok) = Tokenizer::from_bytes(&bytes, None, None) {
            let _ = tok.encode("fuzz me ✓", true);
        }
    }
    // Mutations of a real model reach deeper into the parser and the validator.
    let model = read(fixtures().join("conformance/checkpoint/tokenizer.model"));
    for round in 0..300 {
        let mut m = model.clone();
        match round % 3 {
            0 => m.truncate(rng.below(m.len())),
            1 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(m.len());
                    m[i] = rng.next() as u8;
                }
            }
            _ => {
                let i = rng.below(m.len());
                let junk: Vec<u8> = (0..rng.below(16)).map(|_| rng.next() as u8).collect();
                m.splice(i..i, junk);
            }
        }
        if let Ok(tok) = Tokenizer::from_bytes(&m, None, None) {
            let ids = tok.encode("Can you segment the red square? 🦙", true);
            let _ = tok.decode(&ids);
        }
    }
}

#[test]
fn decode_round_trips() {
    let texts = [
        "Hello world",
        " Hello  world ",
        "Sure, the dog is here.",
        "tabs\tand\nnewlines\n",
        "Ꙋ🦙 emoji and ünïcödé 中文",
    ];
    for (label, tok) in llama_tokenizers(None) {
        for t in texts {
            assert_eq!(tok.decode(&tok.encode(t, true)), t, "{label}");
        }
    }
    for (label, tok) in kit_tokenizers() {
        for t in texts {
            assert_eq!(tok.decode(&tok.encode(t, false)), t, "{label}");
        }
    }
}

#[test]
fn decode_generated_answer() {
    for (label, tok) in kit_tokenizers() {
        let c = case("p2_portrait_300x500");
        let tf = ids(&c["teacher_forced"]["input_ids"]);
        let prompt_len = ids(&c["input_ids"]).len();
        let answer = &tf[prompt_len..];
        assert_eq!(
            tok.decode(answer),
            "Sure, the dog is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5] and the cat is \
             [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5] .",
            "{label}"
        );
        // chat.py keeps special tokens; 4.31 puts a space before </s> and after [SEG5].
        assert!(
            tok.decode_hf(answer, false).ends_with("[SEG5]  .</s>"),
            "{label}"
        );
        assert_eq!(tok.decode_token(1006), "<im_start>");
        assert_eq!(tok.decode_token(1), "");
        assert_eq!(tok.decode_token(IMAGE_TOKEN_INDEX), "");
        assert_eq!(tok.decode_token(tok.id_of("\u{2581}the").unwrap()), " the");
        assert_eq!(tok.decode_token(3 + 0x41), "A");
    }
}

#[test]
fn stream_decoder_joins_split_bytes() {
    for (label, tok) in llama_tokenizers(None) {
        let ids = tok.encode("🦙!", false);
        // ▁, then four byte pieces for the llama, then "!".
        assert_eq!(
            tokens(&tok, &ids)[1..5],
            ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
        );
        let mut d = StreamDecoder::new();
        let parts: Vec<String> = ids.iter().map(|&id| d.push(&tok, id)).collect();
        assert_eq!(parts, ["", "", "", "", "🦙", "!"], "{label}");
        assert_eq!(d.finish(), "");
        // A dangling lead byte is flushed as U+FFFD at the end.
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(&tok, 3 + 0xe2), "");
        assert_eq!(d.finish(), "\u{FFFD}");
        assert_eq!(tok.decode(&[3 + 0xe2, 3 + 0x41]), "\u{FFFD}A");
    }
}

#[test]
fn stream_decoder_equals_decode_on_random_ids() {
    let mut rng = Rng(42);
    for (label, tok) in kit_tokenizers() {
        for _ in 0..500 {
            let n = rng.below(30);
            let ids: Vec<i64> = (0..n)
                .map(|_| match rng.below(4) {
                    0 => 3 + rng.below(256) as i64,          // byte pieces
                    1 => 1000 + rng.below(8) as i64,         // added tokens
                    2 => [0, 1, 2, -200][rng.below(4)],      // specials, image
                    _ => rng.below(tok.vocab_size()) as i64, // anything
                })
                .collect();
            let mut d = StreamDecoder::new();
            let mut s: String = ids.iter().map(|&id| d.push(&tok, id)).collect();
            s.push_str(&d.finish());
            assert_eq!(s, tok.decode(&ids), "{label} {ids:?}");
            assert_eq!(s, tok.decode_hf(&ids, true), "{label} {ids:?}");
        }
    }
}

//! The text layer on top of the id loop: generated ids are decoded as they come
//! ([`StreamDecoder`]: UTF-8 safe, byte tokens held until their character is complete) and
//! watched for stop strings ([`StopChecker`]); only text that is final reaches the caller.

use super::stop::{Checked, StopChecker};
use super::{generate_in, Flow, GenerateOptions, Generation};
use crate::model::{LayerObserver, Sequence};
use crate::error::Result;
use crate::model::Hymba;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use rayon::prelude::*;

/// Decodes generated ids into text, cutting it at the first stop string.
pub struct TextStream<'t> {
    decoder: StreamDecoder<'t>,
    stops: StopChecker,
}

impl<'t> TextStream<'t> {
    /// For the continuation of a prompt (so its first space is kept). Refuses an empty stop
    /// string.
    pub fn new(tokenizer: &'t Tokenizer, stops: &[String]) -> Result<TextStream<'t>> {
        let decoder = StreamDecoder::continuing(tokenizer);
        Ok(TextStream { decoder, stops: StopChecker::new(stops.to_vec())? })
    }

    /// Add a generated id: the text that became final, and whether a stop string was found.
    pub fn push(&mut self, id: u32) -> Result<Checked> {
        let piece = self.decoder.push(id)?;
        Ok(self.stops.push(&piece))
    }

    /// Generation ended without a stop string: the rest of the text (an unfinished character
    /// as U+FFFD, text held back as a possible start of a stop string). Stop strings still apply.
    pub fn finish(self) -> String {
        let TextStream { decoder, mut stops } = self;
        let last = stops.push(&decoder.finish());
        if last.stopped {
            last.text
        } else {
            last.text + &stops.finish()
        }
    }
}

/// [`super::generate`] with the output as text: `on_text` receives each (non-empty) piece of final text
/// as soon as it is known (the stop string and anything after it never arrive). A stop string ends
/// generation with [`super::StopReason::Callback`].
pub fn generate_text(
    model: &Hymba,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    stops: &[String],
    on_text: impl FnMut(&str) -> Result<()>,
) -> Result<Generation> {
    generate_text_in(model, tokenizer, &mut model.new_sequence(), &[], prompt, options, stops, None, on_text)
}

/// [`generate_text`] continuing a sequence that already holds `history` (see [`generate_in`]).
#[allow(clippy::too_many_arguments)] // generate_in's arguments and the text layer's stops
pub fn generate_text_in(
    model: &Hymba,
    tokenizer: &Tokenizer,
    seq: &mut Sequence,
    history: &[u32],
    prompt: &[u32],
    options: &GenerateOptions,
    stops: &[String],
    prefill_observer: Option<&mut dyn LayerObserver>,
    mut on_text: impl FnMut(&str) -> Result<()>,
) -> Result<Generation> {
    let mut stream = TextStream::new(tokenizer, stops)?;
    let mut stopped = false;
    let generation = generate_in(model, seq, history, prompt, options, prefill_observer, |id| {
        let out = stream.push(id)?;
        if !out.text.is_empty() {
            on_text(&out.text)?;
        }
        stopped = out.stopped;
        Ok(if stopped { Flow::Stop } else { Flow::Continue })
    })?;
    let rest = if stopped { String::new() } else { stream.finish() };
    if !rest.is_empty() {
        on_text(&rest)?;
    }
    Ok(generation)
}

/// [`generate_text`] for several prompts in parallel; each result holds the generation and its
/// whole text, in prompt order.
pub fn generate_text_batch(
    model: &Hymba,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    stops: &[String],
) -> Vec<Result<(Generation, String)>> {
    prompts
        .par_iter()
        .map(|prompt| {
            let mut text = String::new();
            let generation = generate_text(model, tokenizer, prompt, options, stops, |piece| {
                text.push_str(piece);
                Ok(())
            })?;
            Ok((generation, text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hymba-tokenizer")).unwrap()
    }

    /// "▁emoji: 🦙": the llama is four byte tokens. As a continuation, the first `▁` prints as a
    /// space.
    const IDS: [u32; 9] = [953, 29877, 2397, 29901, 29871, 243, 162, 169, 156];

    fn stream(tokenizer: &Tokenizer, stops: &[&str]) -> (Vec<String>, Option<usize>, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut stream = TextStream::new(tokenizer, &stops).unwrap();
        let mut pieces = Vec::new();
        for (i, &id) in IDS.iter().enumerate() {
            let out = stream.push(id).unwrap();
            pieces.push(out.text);
            if out.stopped {
                return (pieces, Some(i), String::new());
            }
        }
        (pieces, None, stream.finish())
    }

    #[test]
    fn streamed_text_is_the_decoded_text() {
        let tokenizer = tokenizer();
        let (pieces, stopped, rest) = stream(&tokenizer, &[]);
        assert_eq!(stopped, None);
        assert_eq!(pieces.concat() + &rest, format!(" {}", tokenizer.decode(&IDS).unwrap()));
        assert_eq!(pieces[5..8], ["", "", ""], "no half characters");
        assert_eq!(pieces[8], "🦙");
    }

    #[test]
    fn a_stop_string_inside_a_multibyte_character_run_stops_at_its_last_byte() {
        let tokenizer = tokenizer();
        let (pieces, stopped, _) = stream(&tokenizer, &["🦙"]);
        assert_eq!(stopped, Some(8));
        assert_eq!(pieces.concat(), " emoji: ");
    }

    #[test]
    fn text_held_for_a_stop_string_is_released_at_the_end() {
        let tokenizer = tokenizer();
        let (pieces, stopped, rest) = stream(&tokenizer, &["🦙!"]);
        assert_eq!(stopped, None);
        assert_eq!(pieces.concat(), " emoji: ");
        assert_eq!(rest, "🦙");
    }
}

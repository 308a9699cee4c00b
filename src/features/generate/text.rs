//! The text layer on top of the id loop: generated ids are decoded as they come
//! ([`StreamDecoder`]: UTF-8 safe, byte tokens held until their character is complete) and
//! watched for stop strings ([`StopChecker`]); only text that is final reaches the caller.

use super::stop::{Checked, StopChecker};
use super::{generate_batch, generate_in, BatchOptions, BatchStats, Flow, GenerateOptions, Generation};
use crate::model::{LayerObserver, Sequence};
use crate::base::error::{Error, Result};
use crate::model::Hymba;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use std::cell::RefCell;

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

/// The token callback of the text layer: each id decoded, the final text handed to `on_text`,
/// generation stopped at the first stop string.
pub(crate) struct TextSink<'t, F> {
    stream: TextStream<'t>,
    stopped: bool,
    on_text: F,
}

impl<'t, F: FnMut(&str) -> Result<()>> TextSink<'t, F> {
    pub(crate) fn new(tokenizer: &'t Tokenizer, stops: &[String], on_text: F) -> Result<TextSink<'t, F>> {
        Ok(TextSink { stream: TextStream::new(tokenizer, stops)?, stopped: false, on_text })
    }

    pub(crate) fn push(&mut self, id: u32) -> Result<Flow> {
        let out = self.stream.push(id)?;
        if !out.text.is_empty() {
            (self.on_text)(&out.text)?;
        }
        self.stopped = out.stopped;
        Ok(if self.stopped { Flow::Stop } else { Flow::Continue })
    }

    /// Generation ended: hand over the text held back, unless a stop string ended it.
    pub(crate) fn finish(self) -> Result<()> {
        let TextSink { stream, stopped, mut on_text } = self;
        let rest = if stopped { String::new() } else { stream.finish() };
        if !rest.is_empty() {
            on_text(&rest)?;
        }
        Ok(())
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
    on_text: impl FnMut(&str) -> Result<()>,
) -> Result<Generation> {
    let sink = RefCell::new(TextSink::new(tokenizer, stops, on_text)?);
    let generation = generate_in(model, seq, history, prompt, options, prefill_observer, |id| sink.borrow_mut().push(id))?;
    sink.into_inner().finish()?;
    Ok(generation)
}

/// [`generate_text`] for several prompts decoded together ([`generate_batch`]); each result
/// holds the generation and its whole text, in prompt order.
pub fn generate_text_batch(
    model: &Hymba,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    batching: &BatchOptions,
    stops: &[String],
) -> (Vec<Result<(Generation, String)>>, BatchStats) {
    if let Err(e) = TextStream::new(tokenizer, stops) {
        let failed = prompts.iter().map(|_| Err(Error::new(e.kind, e.message.clone()))).collect();
        return (failed, BatchStats::default());
    }
    let texts: Vec<RefCell<String>> = prompts.iter().map(|_| RefCell::new(String::new())).collect();
    let sinks: Vec<RefCell<TextSink<_>>> = (texts.iter())
        .map(|text| {
            let on_text = move |piece: &str| {
                text.borrow_mut().push_str(piece);
                Ok(())
            };
            RefCell::new(TextSink::new(tokenizer, stops, on_text).expect("stop strings checked above"))
        })
        .collect();
    let (generations, stats) = generate_batch(model, prompts, options, batching, |i| {
        let sink = &sinks[i];
        move |id| sink.borrow_mut().push(id)
    });
    let results = (generations.into_iter().zip(sinks).zip(&texts))
        .map(|((generation, sink), text)| {
            let generation = generation?;
            sink.into_inner().finish()?;
            Ok((generation, text.take()))
        })
        .collect();
    (results, stats)
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

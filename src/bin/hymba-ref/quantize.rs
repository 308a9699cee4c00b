//! `hymba-ref quantize`: write a quantized copy of a bf16 or f32 checkpoint (see
//! docs/QUANTIZATION.md and [`hymba_ref::checkpoint::quantized`]).

use crate::args::model_dir;
use clap::Args;
use hymba_ref::checkpoint::quantized::write_quantized;
use hymba_ref::kernels::quant::QuantType;
use hymba_ref::{Error, Result};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct QuantizeArgs {
    /// The bf16 or f32 checkpoint directory (or its config.json). Default: the bundled demo model.
    #[arg(short = 'm', long)]
    model: Option<PathBuf>,
    /// The new checkpoint directory; it must not exist (written to a temporary directory beside
    /// it, renamed when complete).
    #[arg(long)]
    out: PathBuf,
    /// The block format: q8_0 (8.5 bits a weight) or q4_0 (4.5 bits a weight).
    #[arg(long = "type", value_name = "TYPE", value_parser = crate::load::weights_format)]
    kind: QuantType,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let src = model_dir(args.model.as_deref())?;
    let (same_src, same_out) = (std::fs::canonicalize(&src).ok(), std::fs::canonicalize(&args.out).ok());
    if same_out.is_some() && same_src == same_out {
        return Err(Error::input(format!("--out {} is the input checkpoint; quantize never writes over its input", args.out.display())));
    }
    let start = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let bytes = write_quantized(&src, &args.out, args.kind, |done, total, name| {
        let mut stderr = std::io::stderr().lock();
        match terminal {
            true => { let _ = write!(stderr, "\r\x1b[K[{done}/{total}] {name}"); }
            false if done == total || done % 25 == 0 => { let _ = writeln!(stderr, "[{done}/{total}] {name}"); }
            false => {}
        }
        let _ = stderr.flush();
    })?;
    if terminal {
        eprintln!();
    }
    eprintln!(
        "wrote {} ({}, {:.1} MB of tensors) in {:.1} s",
        args.out.display(),
        args.kind,
        bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

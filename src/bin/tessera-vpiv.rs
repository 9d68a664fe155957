//! `tessera-vpiv`: a virtual YubiKey-compatible PIV card on the vpcd driver of pcscd.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    anyhow::bail!("tessera-vpiv is not built yet")
}

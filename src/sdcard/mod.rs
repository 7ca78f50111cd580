//! SD cards and discovery: per-node first-boot images, flashing with read-back verification,
//! finding Pis on the LAN.

#[derive(Debug, clap::Subcommand)]
pub enum CardCommand {}

pub async fn run(cmd: CardCommand) -> miette::Result<()> {
    match cmd {}
}

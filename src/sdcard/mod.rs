//! SD cards and discovery: per-node first-boot images, flashing with read-back verification,
//! finding Pis on the LAN.
//!
//! `partition` and `fat` read and edit images without mounting; `source` streams compressed
//! inputs; `customize` (with `cloudinit`/`rpios`) writes the first-boot files; `image`, `flash`
//! and `discover` are the commands.

mod cloudinit;
mod customize;
mod discover;
mod fat;
mod flash;
mod image;
mod node;
mod partition;
mod rpios;
mod source;
pub(crate) mod sysdisk;

#[derive(Debug, clap::Subcommand)]
pub enum CardCommand {
    /// OS images customised per node (cloud-init or Raspberry Pi OS first run).
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Write an image to an SD card (or file), verify it by reading it back, customise it.
    Flash(flash::FlashArgs),
    /// Find SSH hosts (Raspberry Pis) on a subnet and match them to the cluster file.
    Discover(discover::DiscoverArgs),
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Decompress an image and customise it for one node (or every node with --all).
    Prepare(image::PrepareArgs),
}

/// Errors of the card commands: plain messages, or cluster-file diagnostics kept as they are
/// (they carry source snippets and hints).
pub(crate) enum Error {
    Msg(String),
    Report(miette::Report),
}

impl From<String> for Error {
    fn from(m: String) -> Self {
        Error::Msg(m)
    }
}

impl From<&str> for Error {
    fn from(m: &str) -> Self {
        Error::Msg(m.to_string())
    }
}

impl From<miette::Report> for Error {
    fn from(r: miette::Report) -> Self {
        Error::Report(r)
    }
}

pub async fn run(cmd: CardCommand) -> miette::Result<()> {
    let result = match cmd {
        // Disk I/O and prompts block: keep them off the async workers.
        CardCommand::Image { command: ImageCommand::Prepare(args) } => blocking(move || image::prepare(args)).await,
        CardCommand::Flash(args) => blocking(move || flash::flash(args)).await,
        CardCommand::Discover(args) => discover::discover(args).await,
    };
    result.map_err(|e| match e {
        Error::Msg(m) => miette::miette!("{m}"),
        Error::Report(r) => r,
    })
}

async fn blocking(f: impl FnOnce() -> Result<(), Error> + Send + 'static) -> Result<(), Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Msg(format!("worker failed: {e}")))?
}

//! `cargo xtask demo`: the quick start. On a fresh Debian 12 machine, as
//! root, it installs what the host lacks, bakes the guest image, builds
//! `kiln`, and runs a job in a fresh microVM that builds a container image
//! from scratch with buildah and runs it with rootless podman.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the image is baked (and reused from when its recipe is unchanged).
    #[arg(long, value_name = "DIR")]
    pub image: Option<PathBuf>,
    /// Do not run .ci/prereqs (apt packages, musl targets, vhost-device-vsock).
    #[arg(long)]
    pub skip_prereqs: bool,
}

/// The demo job: who and where it runs, its network (its address, and the
/// egress policy refusing the cloud metadata address and the host's
/// gateway), then an image made offline from the guest's own static
/// busybox, run rootless.
const DEMO_JOB: &str = r#"set -e
echo "job: uid $(id -u) on $(hostname), kernel $(uname -r)"
gw=$(ip route | awk '/^default/ {print $3}')
echo "network: eth0 $(ip -o -4 addr show dev eth0 | awk '{print $4}'), gateway $gw"
for target in 169.254.169.254 "$gw"; do
  if curl -s -m 3 -o /dev/null "http://$target/"; then
    echo "  http://$target/: reached (the egress policy should have refused it)"
  else
    echo "  http://$target/: refused by the egress policy"
  fi
done
c=$(buildah from scratch)
buildah copy "$c" /bin/busybox /bin/busybox >/dev/null
buildah config --entrypoint '["/bin/busybox"]' "$c"
buildah commit -q "$c" kiln-demo >/dev/null
podman run --rm kiln-demo echo "hello from a rootless container in a fresh microVM"
"#;

pub fn run(args: Args) -> Result<()> {
    let root = crate::workspace_root();
    let image = args.image.unwrap_or_else(|| root.join("target/kiln-image"));

    if !args.skip_prereqs {
        if !crate::is_root() {
            bail!("cargo xtask demo installs packages and boots VMs: run it as root (or pass --skip-prereqs)");
        }
        step("installing what this host lacks (.ci/prereqs)");
        run_cmd(
            Command::new("bash").arg(root.join(".ci/prereqs")),
            "host prerequisites",
        )?;
    }

    step("baking the guest image (cached when the recipe is unchanged)");
    crate::image::run(crate::image::Args::test_image(image.clone()))
        .context("baking the guest image")?;

    step("building kiln");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run_cmd(
        Command::new(&cargo)
            .args(["build", "--release", "--package", "kiln"])
            .current_dir(&root),
        "cargo build -p kiln",
    )?;
    let kiln = root.join("target/release/kiln");

    step("kiln run -- sh -c '<build an image with buildah, run it with podman>'");
    let status = Command::new(&kiln)
        .arg("run")
        .arg("--image")
        .arg(&image)
        .args(["--timeout", "10m", "--", "sh", "-c", DEMO_JOB])
        .status()
        .with_context(|| format!("could not start {}", kiln.display()))?;
    if !status.success() {
        bail!(
            "the demo job failed ({status}); `kiln doctor --image {}` checks the host",
            image.display()
        );
    }
    step("done: that job ran in a microVM that no longer exists");
    Ok(())
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

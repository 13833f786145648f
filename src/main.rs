//! The keygate binary: reads the config and runs the proxy.

fn main() -> anyhow::Result<()> {
    Ok(())
}

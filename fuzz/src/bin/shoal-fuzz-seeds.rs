//! Writes every target's seeds to `DIR/<target>/seed-<n>`: the starting corpus of libFuzzer.

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/fuzz-corpus".into());
    for target in shoal_fuzz::TARGETS {
        let folder = std::path::Path::new(&dir).join(target.name);
        std::fs::create_dir_all(&folder)?;
        for (n, seed) in (target.seeds)().iter().enumerate() {
            std::fs::write(folder.join(format!("seed-{n}")), seed)?;
        }
        println!("{}: {}", target.name, folder.display());
    }
    Ok(())
}

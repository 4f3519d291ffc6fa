//! `progpack map` end to end: the text map, a PNG and an SVG from one workload; bad input is
//! an error message and a failing status, never a panic.

use std::process::Command;

fn progpack() -> Command {
    Command::new(env!("CARGO_BIN_EXE_progpack"))
}

#[test]
fn writes_text_png_and_svg() {
    let dir = std::env::temp_dir().join(format!("progpack-map-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (png, svg) = (dir.join("m.png"), dir.join("m.svg"));
    let out = progpack()
        .args([
            "map",
            "--programs",
            "3000",
            "--sizes",
            "64",
            "--free-every",
            "2",
        ])
        .args(["--text", "--width", "32", "--png"])
        .arg(&png)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("3000 programs loaded (64 B each), 1500 freed, 1500 live"),
        "{stdout}"
    );
    assert!(stdout.contains("legend:"), "{stdout}");
    // every other program freed: the pack line shows partly used groups, and holes
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("0 0x"))
        .unwrap();
    let map = &line[line.find('|').unwrap() + 1..line.rfind('|').unwrap()];
    assert_eq!(map.chars().count(), 32);
    assert!(map.chars().any(|c| c.is_ascii_digit()), "{line}");
    assert!(!line.contains(" 0.0%  "), "holes expected: {line}");

    let png_bytes = std::fs::read(&png).unwrap();
    assert_eq!(&png_bytes[..8], b"\x89PNG\r\n\x1a\n");
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<svg") && svg_text.contains("pack 0"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_fails_without_panicking() {
    for args in [
        &["map", "--sizes", "0"][..],
        &["map", "--sizes", "huge"],
        &["map", "--chunk-size", "48"],
        &["map", "--free-every", "2", "--free-fraction", "0.5"],
        &["map", "--programs", "10", "--png", "/nonexistent-dir/x.png"],
    ] {
        let out = progpack().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?}: no message");
    }
}

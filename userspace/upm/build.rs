// SPDX-License-Identifier: GPL-2.0 OR MIT
// The advice values come from include/upm.h (a link to the repository's include/upm.h, the one
// definition for all of userspace; cargo package copies its contents into the crate).
use std::{env, fs, path::PathBuf};

fn main() {
    let header = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("include/upm.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let text = fs::read_to_string(&header).expect("include/upm.h");
    let value = |name: &str| -> i32 {
        text.lines()
            .filter_map(|l| l.strip_prefix("#define "))
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(name)).then(|| words.next().unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("{name} not in include/upm.h"))
    };
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("advice.rs");
    fs::write(
        out,
        format!(
            "/// `MADV_UPM_MERGEABLE`\npub const MADV_UPM_MERGEABLE: i32 = {};\n\
             /// `MADV_UPM_UNMERGEABLE`\npub const MADV_UPM_UNMERGEABLE: i32 = {};\n",
            value("UPM_MADV_MERGEABLE"),
            value("UPM_MADV_UNMERGEABLE")
        ),
    )
    .unwrap();
}

//! The README's property tables cannot drift from the elements: for every element of the plugin,
//! every property the element declares itself (what `gst-inspect-1.0 ELEMENT` lists above the
//! inherited GstObject/GstElement/GstBin/GstBaseSink ones) must have a row in the table under the
//! element's `## ELEMENT` section of README.md, with the same default; every row must name a
//! property that exists; and every property must have a description (`gst-inspect-1.0` shows the
//! blurb as its documentation).
//!
//! The properties are read in-process from the registered plugin, which is exactly what
//! `gst-inspect-1.0` prints: the same GParamSpecs, names, blurbs and default values.
//!
//! A table row is `| names | default | meaning |`. The names cell holds one or more backticked
//! names separated by `,` or `/`; a name starting with `-` replaces the last `-part` of the name
//! before it (`multicast-port-min` / `-max`). With several names, the default cell holds one value
//! for all, or one per name separated by ` / `. Defaults are compared as values: numbers as
//! numbers, booleans as `true`/`false`, enums by nick, flags as a set of nicks joined with `+`
//! (in any order) or a number, strings as they are; `NULL` and an empty cell mean no value (a
//! NULL or empty string, or a property without a default such as a structure). In a string
//! default, `VERSION` stands for the crate's version.

mod common;

use std::collections::BTreeSet;

use gst::glib;
use gst::prelude::*;

const ELEMENTS: [&str; 7] = [
    "rtspserversink",
    "rtmpserversrc",
    "rtspsrc2",
    "rtspserversrc",
    "rsrtmpsink",
    "rshlssink",
    "rtspclientsink2",
];

/// One row of a README property table.
#[derive(Debug)]
struct Row {
    line: usize,
    names: Vec<String>,
    defaults: Vec<String>,
}

/// The rows of every `| property | default | meaning |` table in the `## element` section.
fn readme_rows(readme: &str, element: &str) -> Result<Vec<Row>, String> {
    let heading = format!("## {element}");
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_end() == heading)
        .ok_or_else(|| format!("README.md has no `{heading}` section"))?;
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map_or(lines.len(), |p| start + 1 + p);

    let mut rows = Vec::new();
    let mut tables = 0;
    let mut i = start + 1;
    while i < end {
        let cells = split_cells(lines[i]);
        if cells.len() >= 3 && cells[0] == "property" && cells[1] == "default" {
            tables += 1;
            i += 2; // the header and the |---| line
            while i < end && lines[i].trim_start().starts_with('|') {
                rows.push(parse_row(lines[i], i + 1)?);
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    if tables == 0 {
        return Err(format!(
            "README.md's `{heading}` section has no `| property | default | meaning |` table"
        ));
    }
    Ok(rows)
}

fn split_cells(line: &str) -> Vec<String> {
    let t = line.trim();
    if !t.starts_with('|') {
        return Vec::new();
    }
    let t = t.trim_start_matches('|').trim_end_matches('|');
    t.split('|').map(|c| c.trim().to_string()).collect()
}

fn parse_row(line: &str, line_no: usize) -> Result<Row, String> {
    let cells = split_cells(line);
    if cells.len() < 3 {
        return Err(format!("README.md:{line_no}: a row needs 3 cells: {line}"));
    }
    // Names: the backticked words of the first cell.
    let mut names: Vec<String> = Vec::new();
    for (k, part) in cells[0].split('`').enumerate() {
        if k % 2 == 0 {
            let sep = part.trim();
            if !(sep.is_empty() || sep == "," || sep == "/") {
                return Err(format!(
                    "README.md:{line_no}: unexpected text `{sep}` in the names cell: {line}"
                ));
            }
            continue;
        }
        let name = if let Some(suffix) = part.strip_prefix('-') {
            let prev = names
                .last()
                .ok_or_else(|| format!("README.md:{line_no}: `{part}` follows no full name"))?;
            let stem = prev
                .rfind('-')
                .map(|p| &prev[..p])
                .ok_or_else(|| format!("README.md:{line_no}: `{prev}` has no `-part`"))?;
            format!("{stem}-{suffix}")
        } else {
            part.to_string()
        };
        names.push(name);
    }
    if names.is_empty() {
        return Err(format!(
            "README.md:{line_no}: no backticked property name: {line}"
        ));
    }
    let cell = cells[1].as_str();
    let defaults: Vec<String> = if names.len() > 1 && cell.contains(" / ") {
        cell.split(" / ").map(unquote).collect()
    } else {
        vec![unquote(cell); names.len()]
    };
    if defaults.len() != names.len() {
        return Err(format!(
            "README.md:{line_no}: {} names but {} defaults: {line}",
            names.len(),
            defaults.len()
        ));
    }
    Ok(Row {
        line: line_no,
        names,
        defaults,
    })
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('`').to_string()
}

/// How a property's default is shown, for messages.
fn show(v: &glib::Value) -> String {
    if let Some((_, e)) = glib::EnumValue::from_value(v) {
        return e.nick().to_string();
    }
    if let Some((_, fs)) = glib::FlagsValue::from_value(v) {
        let nicks: Vec<&str> = fs.iter().map(|f| f.nick()).collect();
        return if nicks.is_empty() {
            "0".into()
        } else {
            nicks.join("+")
        };
    }
    if let Ok(s) = v.get::<Option<String>>() {
        return s.unwrap_or_else(|| "NULL".into());
    }
    v.transform::<String>()
        .ok()
        .and_then(|s| s.get::<Option<String>>().ok().flatten())
        .unwrap_or_else(|| format!("(no default: {})", v.type_()))
}

fn is_empty(readme: &str) -> bool {
    readme.is_empty() || readme == "NULL"
}

/// Whether the README's default `readme` means the property's default `v`.
fn same_default(readme: &str, v: &glib::Value) -> bool {
    if let Some((_, e)) = glib::EnumValue::from_value(v) {
        return readme == e.nick() || readme == e.name();
    }
    if let Some((class, fs)) = glib::FlagsValue::from_value(v) {
        let actual = fs.iter().fold(0u32, |acc, f| acc | f.value());
        let parsed = if let Some(hex) = readme.strip_prefix("0x") {
            u32::from_str_radix(hex, 16).ok()
        } else if let Ok(n) = readme.parse::<u32>() {
            Some(n)
        } else {
            readme
                .split(['+', '|'])
                .map(|nick| {
                    let nick = nick.trim();
                    class
                        .value_by_nick(nick)
                        .or_else(|| class.value_by_name(nick))
                        .map(|f| f.value())
                })
                .try_fold(0u32, |acc, f| f.map(|f| acc | f))
        };
        return parsed == Some(actual);
    }
    if let Ok(b) = v.get::<bool>() {
        return readme == if b { "true" } else { "false" };
    }
    if let Ok(s) = v.get::<Option<String>>() {
        let s = s.unwrap_or_default();
        let readme = readme.replace("VERSION", env!("CARGO_PKG_VERSION"));
        return if is_empty(&readme) {
            s.is_empty()
        } else {
            readme == s
        };
    }
    macro_rules! number {
        ($($t:ty),*) => {$(
            if let Ok(n) = v.get::<$t>() {
                return readme.parse::<i128>().ok() == Some(n as i128);
            }
        )*};
    }
    number!(i32, u32, i64, u64, i8, u8);
    if let Ok(f) = v.get::<f64>() {
        return readme.parse::<f64>().ok() == Some(f);
    }
    if let Ok(f) = v.get::<f32>() {
        return readme.parse::<f32>().ok() == Some(f);
    }
    // Structures, objects, boxed: no default to document.
    is_empty(readme)
}

/// Every mismatch between the element's properties and the README's table for it.
fn check_element(readme: &str, element: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let e = gst::ElementFactory::make(element)
        .build()
        .unwrap_or_else(|err| panic!("{element}: {err}"));
    common::assert_ours(&e);
    let own_type = e.type_();

    let rows = match readme_rows(readme, element) {
        Ok(rows) => rows,
        Err(err) => return vec![err],
    };

    let mut documented = BTreeSet::new();
    for row in &rows {
        for (name, default) in row.names.iter().zip(&row.defaults) {
            if !documented.insert(name.clone()) {
                problems.push(format!(
                    "README.md:{}: {element}: `{name}` is documented twice",
                    row.line
                ));
            }
            let Some(pspec) = e.find_property(name) else {
                problems.push(format!(
                    "README.md:{}: {element} has no property `{name}`",
                    row.line
                ));
                continue;
            };
            let value = pspec.default_value();
            if !same_default(default, value) {
                problems.push(format!(
                    "README.md:{}: {element}: `{name}` defaults to `{}`, the README says `{default}`",
                    row.line,
                    show(value)
                ));
            }
        }
    }

    for pspec in e.list_properties().iter() {
        // The element's own properties; GstObject's, GstElement's, GstBin's and GstBaseSink's
        // are documented upstream.
        if pspec.owner_type() != own_type {
            continue;
        }
        let name = pspec.name();
        if !documented.contains(name) {
            problems.push(format!(
                "README.md: {element}'s property `{name}` (default `{}`) has no row in the `## {element}` table",
                show(pspec.default_value())
            ));
        }
        let blurb = pspec.blurb().unwrap_or("").trim();
        if blurb.is_empty() || blurb == name {
            problems.push(format!(
                "{element}: property `{name}` has no description (blurb) for gst-inspect-1.0"
            ));
        }
    }
    problems
}

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn readme_property_tables_match_the_elements() {
    common::init();
    let readme = readme();
    let problems: Vec<String> = ELEMENTS
        .iter()
        .flat_map(|element| check_element(&readme, element))
        .collect();
    assert!(
        problems.is_empty(),
        "README.md and the elements' properties disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// The checker itself: it finds a missing row, a row of no property, a wrong default, and accepts
/// the forms the README uses.
#[test]
fn the_checker_catches_drift() {
    common::init();
    let good = readme();
    assert!(check_element(&good, "rtspserversink").is_empty());

    // Rows of the rtspserversink table, drifted; each must be found (the README's rows changed
    // otherwise: adjust them here).
    let mut drifted = good.clone();
    for (row, replacement) in [
        ("| `port` | 8554 |", "| `port` | 554 |"),
        ("| `backlog` | 1024 |", "| `backlog-gone` | 1024 |"),
        (
            "| `mtu` | 1400 |",
            "| `no-such-property` | 1 | x |\n| `mtu` | 1400 |",
        ),
    ] {
        assert!(drifted.contains(row), "README.md has no row starting {row}");
        drifted = drifted.replacen(row, replacement, 1);
    }
    let problems = check_element(&drifted, "rtspserversink").join("\n");
    assert!(
        problems.contains("`port` defaults to `8554`, the README says `554`"),
        "{problems}"
    );
    assert!(
        problems.contains("property `backlog` (default `1024`) has no row"),
        "{problems}"
    );
    assert!(
        problems.contains("rtspserversink has no property `no-such-property`"),
        "{problems}"
    );
    assert!(
        problems.contains("rtspserversink has no property `backlog-gone`"),
        "{problems}"
    );
    assert_eq!(problems.lines().count(), 4, "{problems}");

    let row = parse_row("| `multicast-port-min` / `-max` | 5000 / 5999 | range |", 1).unwrap();
    assert_eq!(row.names, ["multicast-port-min", "multicast-port-max"]);
    assert_eq!(row.defaults, ["5000", "5999"]);
    let row = parse_row("| `user-id`, `user-pw` | | credentials |", 1).unwrap();
    assert_eq!(row.names, ["user-id", "user-pw"]);
    assert_eq!(row.defaults, ["", ""]);

    let e = gst::ElementFactory::make("rtspserversink").build().unwrap();
    let protocols = e.find_property("protocols").unwrap();
    for form in ["udp+udp-mcast+tcp", "tcp+udp+udp-mcast", "7", "0x7"] {
        assert!(same_default(form, protocols.default_value()), "{form}");
    }
    assert!(!same_default("udp+tcp", protocols.default_value()));
    let iface = e.find_property("multicast-iface").unwrap();
    assert!(same_default("NULL", iface.default_value()));
    assert!(same_default("", iface.default_value()));
    assert!(!same_default("lo", iface.default_value()));
}

/// A stand-in for another plugin's element named `rtspsrc2` (gst-plugins-rs's `rsrtsp`), as a
/// static plugin of its own with its own GType.
macro_rules! stand_in_plugin {
    ($module:ident, $plugin:ident, $type_name:literal) => {
        mod $module {
            use gst::glib;
            use gst::prelude::*;
            use gst::subclass::prelude::*;

            #[derive(Default)]
            pub struct Imp;

            #[glib::object_subclass]
            impl ObjectSubclass for Imp {
                const NAME: &'static str = $type_name;
                type Type = Element;
                type ParentType = gst::Element;
            }

            impl ObjectImpl for Imp {}
            impl GstObjectImpl for Imp {}
            impl ElementImpl for Imp {
                fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
                    static META: std::sync::LazyLock<gst::subclass::ElementMetadata> =
                        std::sync::LazyLock::new(|| {
                            gst::subclass::ElementMetadata::new(
                                "Stand-in RTSP source",
                                "Source/Network",
                                "Another plugin's rtspsrc2",
                                "test",
                            )
                        });
                    Some(&META)
                }
            }

            glib::wrapper! {
                pub struct Element(ObjectSubclass<Imp>) @extends gst::Element, gst::Object;
            }

            fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
                gst::Element::register(
                    Some(plugin),
                    "rtspsrc2",
                    gst::Rank::PRIMARY,
                    Element::static_type(),
                )
            }

            gst::plugin_define!(
                $plugin,
                "stand-in rtspsrc2",
                plugin_init,
                "1.0",
                "MPL",
                "stand-in",
                "stand-in",
                "https://example.invalid"
            );
        }
    };
}

stand_in_plugin!(stand_in_before, docsstandinbefore, "GstDocsStandInBefore");
stand_in_plugin!(stand_in_after, docsstandinafter, "GstDocsStandInAfter");

/// The plugin that provides the element factory `rtspsrc2` now, and how many features of that
/// name the registry holds.
fn rtspsrc2_owner() -> (String, usize) {
    let registry = gst::Registry::get();
    let owner = gst::ElementFactory::find("rtspsrc2")
        .and_then(|f| f.plugin_name())
        .map(|p| p.to_string())
        .unwrap_or_default();
    let count = registry
        .features(gst::ElementFactory::static_type())
        .iter()
        .filter(|f| f.name() == "rtspsrc2")
        .count();
    (owner, count)
}

/// What README.md's "Coexistence" section says an application can rely on: of two plugins with
/// an element named `rtspsrc2`, the one registered last provides it, the other's feature leaves
/// the registry (so no rank can bring it back), and `plugin_register_static()` after the other
/// plugin makes `rtspsrc2` ours. Run in a child process (see the test below), since it replaces
/// `rtspsrc2` for the whole process.
#[test]
#[ignore = "run by readme_coexistence_holds in a child process"]
fn coexistence_child() {
    gst::init().unwrap();
    stand_in_before::plugin_register_static().unwrap();
    assert_eq!(rtspsrc2_owner(), ("docsstandinbefore".to_string(), 1));

    gstlivestreaming::plugin_register_static().unwrap();
    assert_eq!(rtspsrc2_owner(), ("livestreaming".to_string(), 1));
    let e = gst::ElementFactory::make("rtspsrc2").build().unwrap();
    assert_eq!(e.type_().name(), "GstLsRtspSrc2");

    stand_in_after::plugin_register_static().unwrap();
    assert_eq!(rtspsrc2_owner(), ("docsstandinafter".to_string(), 1));
    let e = gst::ElementFactory::make("rtspsrc2").build().unwrap();
    assert_eq!(e.type_().name(), "GstDocsStandInAfter");
    println!("coexistence-child-ok");
}

#[test]
fn readme_coexistence_holds() {
    let exe = std::env::current_exe().expect("test binary");
    let (out, timed_out) = common::run(
        std::process::Command::new(exe).args([
            "coexistence_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]),
        std::time::Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !timed_out && out.status.success() && stdout.contains("coexistence-child-ok"),
        "child failed (timed out: {timed_out}):\n{stdout}\n{stderr}"
    );
}

/// The debug categories the plugin's source creates: the string literal after each
/// `DebugCategory::new(` under src/.
fn source_categories() -> BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (k, part) in text.split("DebugCategory::new(").enumerate() {
                    if k == 0 {
                        continue;
                    }
                    if let Some(name) = part.split('"').nth(1) {
                        out.insert(name.to_string());
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut out,
    );
    out
}

/// README.md's "Debug logs" table names every debug category the plugin creates, and only those.
#[test]
fn readme_debug_categories_match_the_source() {
    let readme = readme();
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_end() == "## Debug logs")
        .expect("README.md has a `## Debug logs` section");
    let mut documented = BTreeSet::new();
    for line in lines[start + 1..]
        .iter()
        .take_while(|l| !l.starts_with("## "))
    {
        let cells = split_cells(line);
        if cells.len() < 2 || cells[0] == "category" || cells[0].starts_with("---") {
            continue;
        }
        for (k, name) in cells[0].split('`').enumerate() {
            if k % 2 == 1 {
                documented.insert(name.to_string());
            }
        }
    }
    let created = source_categories();
    for name in [
        "lsrtsp",
        "lsrtp",
        "lsrtmp",
        "lshls",
        "rtspsrc2",
        "rshlssink",
    ] {
        assert!(
            created.contains(name),
            "{name} not found in src/: {created:?}"
        );
    }
    assert_eq!(
        documented, created,
        "README.md's Debug logs table (left) and the categories src/ creates (right) differ"
    );
}

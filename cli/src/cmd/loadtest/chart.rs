//! The load test's files: `samples.csv` and `chart.png`, the graph users know from the
//! CloudWatch console (OpenMapRunLimit, ApproximateOpenMapRunCount,
//! ApproximateMapRunBacklogSize over time).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use super::check::Sample;

pub const CSV_HEADER: &str = "t_ms,open_map_run_limit,open_map_runs,backlog_size,runs_finished,executions_finished,executions_per_s";

pub fn write_csv(path: &Path, samples: &[Sample]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "{CSV_HEADER}")?;
    for s in samples {
        writeln!(
            out,
            "{},{},{},{},{},{},{:.1}",
            s.t_ms,
            s.open_map_run_limit,
            s.open_map_runs,
            s.backlog_size,
            s.runs_finished,
            s.executions_finished,
            s.executions_per_s
        )?;
    }
    out.flush()
}

/// Where TrueType fonts usually are (Debian/Ubuntu, Fedora, Arch, macOS). Text needs one:
/// the pure-Rust rasterizer has no system font lookup, which is what keeps fontconfig and
/// freetype out of the build.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Loads the first font found as plotters' "sans-serif", once per process; the path used,
/// or `None` when there is none (the chart is then drawn without text).
pub fn font() -> Option<&'static Path> {
    static FONT: OnceLock<Option<PathBuf>> = OnceLock::new();
    FONT.get_or_init(|| {
        FONT_CANDIDATES.iter().find_map(|p| {
            let bytes = std::fs::read(p).ok()?;
            // plotters keeps fonts for the life of the process; leaking the one file is that.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).ok()?;
            Some(PathBuf::from(p))
        })
    })
    .as_deref()
}

pub fn font_candidates() -> &'static [&'static str] {
    FONT_CANDIDATES
}

/// Reads one gauge off a sample.
type Gauge = fn(&Sample) -> usize;

const LIMIT_COLOR: RGBColor = RGBColor(31, 119, 180);
const OPEN_COLOR: RGBColor = RGBColor(255, 127, 14);
const BACKLOG_COLOR: RGBColor = RGBColor(44, 160, 44);

/// Draws limit, open runs and backlog against seconds since the first start. With
/// `with_text` false (no font) the same lines and grid are drawn without any text.
pub fn draw(path: &Path, samples: &[Sample], title: &str, with_text: bool) -> Result<(), String> {
    draw_inner(path, samples, title, with_text)
        .map_err(|e| format!("drawing {}: {e}", path.display()))
}

fn draw_inner(
    path: &Path,
    samples: &[Sample],
    title: &str,
    with_text: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1280, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = samples
        .last()
        .map_or(1.0, |s| s.t_ms as f64 / 1000.0)
        .max(1.0);
    let y_top = samples
        .iter()
        .map(|s| {
            s.open_map_run_limit
                .max(s.open_map_runs)
                .max(s.backlog_size)
        })
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;

    let mut builder = ChartBuilder::on(&root);
    builder.margin(24);
    if with_text {
        builder
            .caption(title, ("sans-serif", 24))
            .x_label_area_size(48)
            .y_label_area_size(72);
    }
    let mut chart = builder.build_cartesian_2d(0f64..x_max, 0f64..y_top)?;
    let x_label = |v: &f64| {
        if x_max >= 10.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(210, 210, 210));
    if with_text {
        mesh.x_desc("seconds since the first start")
            .y_desc("map runs")
            .label_style(("sans-serif", 15))
            .x_label_formatter(&x_label)
            .y_label_formatter(&|v| format!("{v:.0}"));
    }
    mesh.draw()?;

    let t = |s: &Sample| s.t_ms as f64 / 1000.0;
    let legend = |color: RGBColor| {
        move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
    };
    let gauges: [(&str, RGBColor, Gauge); 2] = [
        ("ApproximateOpenMapRunCount", OPEN_COLOR, |s| {
            s.open_map_runs
        }),
        ("ApproximateMapRunBacklogSize", BACKLOG_COLOR, |s| {
            s.backlog_size
        }),
    ];
    for (name, color, value) in gauges {
        let drawn = chart.draw_series(LineSeries::new(
            samples.iter().map(|s| (t(s), value(s) as f64)),
            color.stroke_width(3),
        ))?;
        if with_text {
            drawn.label(name).legend(legend(color));
        }
    }
    // Dashed and on top: under load the open runs sit exactly on the limit.
    let drawn = chart.draw_series(DashedLineSeries::new(
        samples.iter().map(|s| (t(s), s.open_map_run_limit as f64)),
        12,
        8,
        LIMIT_COLOR.stroke_width(3),
    ))?;
    if with_text {
        drawn.label("OpenMapRunLimit").legend(legend(LIMIT_COLOR));
    }
    if with_text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

    fn samples() -> Vec<Sample> {
        (0..50u64)
            .map(|i| Sample {
                t_ms: i * 100,
                open_map_run_limit: 20,
                open_map_runs: (i as usize * 3).min(20),
                backlog_size: 180usize.saturating_sub(i as usize * 4),
                runs_finished: i * 4,
                executions_finished: i * 8,
                executions_per_s: 80.0,
            })
            .collect()
    }

    #[test]
    fn csv_has_the_header_and_one_row_per_sample() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.csv");
        write_csv(&path, &samples()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines.len(), 51);
        assert_eq!(lines[2], "100,20,3,176,4,8,80.0");
    }

    #[test]
    fn chart_without_a_font_is_still_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        draw(&path, &samples(), "no text", false).unwrap();
        assert!(std::fs::read(&path).unwrap().starts_with(PNG_MAGIC));
    }

    #[test]
    fn chart_with_a_font_when_the_machine_has_one() {
        if font().is_none() {
            eprintln!("no font among {FONT_CANDIDATES:?}; the labelled chart is not exercised");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        draw(&path, &samples(), "fleetmap loadtest", true).unwrap();
        assert!(std::fs::read(&path).unwrap().starts_with(PNG_MAGIC));
    }

    #[test]
    fn chart_of_no_samples_does_not_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        draw(&path, &[], "empty", font().is_some()).unwrap();
        assert!(std::fs::read(&path).unwrap().starts_with(PNG_MAGIC));
    }
}

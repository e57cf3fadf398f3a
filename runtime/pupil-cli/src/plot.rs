//! PNG line plots (plotters, with an embedded Noto Sans so no system fonts are needed):
//! panels stacked vertically, each with its own series and legend.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

/// One line.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) points, in order of x.
    pub points: Vec<(f64, f64)>,
}

/// One chart.
pub struct Panel {
    /// Title above the chart.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Its lines.
    pub series: Vec<Series>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font shipped by the crate; a failure only loses text.
        let _ =
            plotters::style::register_font("sans-serif", FontStyle::Normal, ttf_noto_sans::REGULAR);
    });
}

/// Draw `panels` into a PNG at `path`.
pub fn draw(path: &Path, panels: &[Panel]) -> Result<(), Box<dyn std::error::Error>> {
    register_font();
    // The PNG encoder's error does not name the file: open it here first for a clear one.
    std::fs::File::create(path)
        .map_err(|e| format!("cannot write the plot {}: {e}", path.display()))?;
    let height = 340 * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, panel) in root
        .split_evenly((panels.len().max(1), 1))
        .iter()
        .zip(panels)
    {
        let all: Vec<(f64, f64)> = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .collect();
        let (x0, x1) = bounds(all.iter().map(|p| p.0), 0.0);
        let (y0, y1) = bounds(all.iter().map(|p| p.1), 0.05);
        // Room under the lines for the legend: one line of text per series.
        let y0 = y0 - (y1 - y0) * 0.14 * panel.series.len() as f64;
        let integral_x = all.iter().all(|p| p.0.fract() == 0.0) && x1 - x0 <= 40.0;
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        let ticks = if integral_x {
            (x1 - x0) as usize + 1
        } else {
            10
        };
        chart
            .configure_mesh()
            .x_labels(ticks)
            .x_label_formatter(&|x| {
                if integral_x {
                    format!("{x:.0}")
                } else {
                    format!("{x:.2}")
                }
            })
            .x_desc(&panel.x_label)
            .y_desc(&panel.y_label)
            .label_style(("sans-serif", 13))
            .draw()?;
        for (i, s) in panel.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(&s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
    }
    root.present()
        .map_err(|e| format!("cannot write the plot {}: {e}", path.display()))?;
    Ok(())
}

/// Range of `values` widened by `pad` of its span (and never empty).
fn bounds(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(1e-6);
    (
        lo - span * pad,
        hi + span * pad + if hi == lo { 1.0 } else { 0.0 },
    )
}

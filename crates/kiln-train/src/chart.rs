//! PNG charts (plotters, with a bundled DejaVu Sans font so that no system font is needed): the ROUGE bar
//! chart of the seed notebook and training loss curves.

use std::path::Path;

use plotters::prelude::*;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// A chart that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot draw chart: {msg}")]
pub struct ChartError {
    /// The chart file.
    pub path: String,
    /// What went wrong.
    pub msg: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> ChartError {
    ChartError {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// A bar chart of named values in [0, 1] (e.g. ROUGE F-measures), with the value above each bar.
pub fn bar_chart(path: &Path, title: &str, bars: &[(String, f64)]) -> Result<(), ChartError> {
    register_font();
    if bars.is_empty() {
        return Err(err(path, "no values"));
    }
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let top = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(0.1) * 1.2;
    let n = bars.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 28))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..top)
        .map_err(|e| err(path, e))?;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| err(path, e))?;
    let colors = [
        RGBColor(66, 133, 244),
        RGBColor(219, 68, 55),
        RGBColor(244, 180, 0),
        RGBColor(15, 157, 88),
    ];
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            let c = colors[i % colors.len()];
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                c.filled(),
            );
            r.set_margin(0, 0, 12, 12);
            r
        }))
        .map_err(|e| err(path, e))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            Text::new(
                format!("{v:.4}"),
                (SegmentValue::CenterOf(i), v + top * 0.02),
                ("sans-serif", 16),
            )
        }))
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}

/// Line chart of one or more named series over steps (e.g. training and validation loss).
pub fn line_chart(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), ChartError> {
    line_chart_xy(path, title, "step", series)
}

/// Line chart of one or more named series of (x, y) points, with `x_desc` under the x axis.
pub fn line_chart_xy(
    path: &Path,
    title: &str,
    x_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), ChartError> {
    register_font();
    let pts: Vec<&(f64, f64)> = series
        .iter()
        .flat_map(|s| s.1.iter())
        .filter(|p| p.1.is_finite())
        .collect();
    if pts.is_empty() {
        return Err(err(path, "no points"));
    }
    let (x0, x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (y0, y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    let (x1, y1) = (
        if x1 > x0 { x1 } else { x0 + 1.0 },
        if y1 > y0 { y1 } else { y0 + 1.0 },
    );
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 28))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", 14))
        .x_desc(x_desc)
        .draw()
        .map_err(|e| err(path, e))?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (i, (name, s)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(
                s.iter().copied().filter(|p| p.1.is_finite()),
                c.stroke_width(2),
            ))
            .map_err(|e| err(path, e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_and_line_charts_write_pngs() {
        let dir = std::env::temp_dir().join(format!("kiln-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bars: Vec<(String, f64)> = [
            ("rouge1", 0.41),
            ("rouge2", 0.19),
            ("rougeL", 0.29),
            ("rougeLsum", 0.38),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), *b))
        .collect();
        let p = dir.join("bars.png");
        bar_chart(&p, "ROUGE", &bars).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let l = dir.join("loss.png");
        line_chart(
            &l,
            "loss",
            &[("train".into(), vec![(0.0, 2.0), (1.0, 1.5), (2.0, 1.2)])],
        )
        .unwrap();
        assert!(std::fs::metadata(&l).unwrap().len() > 1000);
        assert!(bar_chart(&dir.join("x.png"), "t", &[]).is_err());
    }
}

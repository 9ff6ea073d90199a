//! The SVG chart of a report (plotters): four panels over the seconds of
//! the measured run, one below the other.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::Report;

/// One line of a panel: its legend, its colour and its (second, value) points.
type Line<'a> = (&'a str, RGBColor, Vec<(usize, f64)>);

/// One panel: its title, the unit of its y axis and its lines.
type Panel<'a> = (String, &'a str, Vec<Line<'a>>);

impl Report {
    /// Four panels over the seconds of the measured run: requests per
    /// second and latency p50/p99 (as the generator saw them; wrk gives no
    /// per-second data), then outcomes decided per second and consumer lag.
    pub fn svg(&self) -> String {
        let mut svg = String::new();
        if let Err(e) = self.draw(&mut svg) {
            return format!(
                r#"<svg xmlns="http://www.w3.org/2000/svg"><text y="20">chart failed: {e}</text></svg>"#
            );
        }
        svg
    }

    /// Draws the panels into `svg`; an error is plotters' (the caller
    /// turns it into an SVG that says so).
    fn draw(&self, svg: &mut String) -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(svg, (900, 1000)).into_drawing_area();
        root.fill(&WHITE)?;
        let areas = root.split_evenly((4, 1));
        for (area, panel) in areas.iter().zip(self.panels()) {
            draw_panel(area, panel)?;
        }
        root.present()?;
        Ok(())
    }

    /// The four panels' series, from the generator's timeline (empty with
    /// wrk) and the pipeline's.
    fn panels(&self) -> [Panel<'static>; 4] {
        let generator = &self.generator;
        let t = &self.timeline;
        let p = &self.pipeline_timeline;
        let rps: Vec<(usize, f64)> = t.iter().map(|s| (s.second, s.requests as f64)).collect();
        let p50: Vec<(usize, f64)> = t.iter().map(|s| (s.second, s.latency_ms_p50)).collect();
        let p99: Vec<(usize, f64)> = t.iter().map(|s| (s.second, s.latency_ms_p99)).collect();
        let applied: Vec<(usize, f64)> = p.iter().map(|s| (s.second, s.applied as f64)).collect();
        let lag: Vec<(usize, f64)> = p
            .iter()
            .filter_map(|s| Some((s.second, s.consumer_lag? as f64)))
            .collect();
        [
            (
                format!("engine: requests per second ({generator})"),
                "requests / s",
                vec![("RPS", BLUE, rps)],
            ),
            (
                format!("engine: latency ({generator})"),
                "ms",
                vec![("p50", GREEN, p50), ("p99", RED, p99)],
            ),
            (
                "pipeline: outcomes decided per second".to_owned(),
                "transactions / s",
                vec![("applied or rejected", MAGENTA, applied)],
            ),
            (
                "pipeline: consumer group lag".to_owned(),
                "records",
                vec![("lag", BLACK, lag)],
            ),
        ]
    }
}

/// One panel in `area`: its lines over a time axis, its y axis 10% above
/// its highest value, a legend, and "not measured" in its caption when it
/// has no points.
fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    (title, unit, lines): Panel<'_>,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let seconds = |values: usize| values.max(2) as f64;
    let points = lines.iter().map(|(_, _, v)| v.len()).max().unwrap_or(0);
    let x_max = seconds(
        lines
            .iter()
            .flat_map(|(_, _, v)| v.iter().map(|(x, _)| *x + 1))
            .max()
            .unwrap_or(0),
    );
    let y_max = lines
        .iter()
        .flat_map(|(_, _, v)| v.iter().map(|(_, y)| *y))
        .fold(1.0_f64, f64::max)
        * 1.1;
    let caption = if points == 0 {
        format!("{title}: not measured")
    } else {
        title
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the measured run started")
        .y_desc(unit)
        .draw()?;
    for (name, color, values) in lines {
        chart
            .draw_series(LineSeries::new(
                values.into_iter().map(|(x, y)| (x as f64, y)),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    if points > 0 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::report::tests::wrk_report;

    /// The chart is plotters' SVG with labelled time axes, and says "not
    /// measured" for a panel without data (wrk gives no per-second data).
    #[test]
    fn chart_labels_its_axes_and_what_was_not_measured() {
        let svg = wrk_report().svg();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains("seconds since the measured run started"));
        assert!(svg.contains("pipeline: consumer group lag"));
        assert!(svg.contains("engine: latency (wrk): not measured"));
        assert!(svg.contains("<polyline") || svg.contains("<path"));
    }
}

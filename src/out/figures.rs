//! The figures of a run beyond heatmaps and scatter plots: training curves as small multiples and the
//! paper's bar chart of assigned context labels per target type (Fig. 2, left).

use super::plot::{Anchor, Figure, Rgb, category_colour, tick_label, ticks};

/// One panel per series (each on its own scale), three per row: `x` against each series' values.
/// Non-finite values leave gaps.
pub fn small_multiples(title: &str, x_label: &str, x: &[f64], series: &[(String, Vec<f64>)]) -> Figure {
    let (pw, ph) = (200.0, 120.0);
    let (gap_x, gap_y) = (70.0, 70.0);
    let cols = series.len().clamp(1, 3);
    let rows = series.len().div_ceil(cols).max(1);
    let mut f = Figure::new(30.0 + cols as f64 * (pw + gap_x), 50.0 + rows as f64 * (ph + gap_y));
    f.text(f.width / 2.0, 22.0, 13.0, Anchor::Middle, title);
    let finite = |v: &[f64]| v.iter().copied().filter(|x| x.is_finite()).collect::<Vec<f64>>();
    let span = |v: &[f64]| {
        let v = finite(v);
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if hi - lo < 1e-12 * hi.abs().max(1.0) {
            (lo - 0.5, hi + 0.5)
        } else {
            (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        }
    };
    let (xl, xh) = span(x);
    // Whole-number x (epochs) gets whole-number ticks.
    let whole = x.iter().all(|v| v.fract() == 0.0);
    let x_ticks: Vec<f64> = if whole {
        let t: Vec<f64> = ticks(xl, xh).into_iter().filter(|v| v.fract() == 0.0).collect();
        if t.len() >= 2 { t } else { x.to_vec() }
    } else {
        ticks(xl, xh)
    };
    for (k, (name, y)) in series.iter().enumerate() {
        let (x0, y0) = (60.0 + (k % cols) as f64 * (pw + gap_x), 50.0 + (k / cols) as f64 * (ph + gap_y));
        let (yl, yh) = span(y);
        let sx = |v: f64| x0 + (v - xl) / (xh - xl) * pw;
        let sy = |v: f64| y0 + ph - (v - yl) / (yh - yl) * ph;
        f.rect(x0, y0, pw, ph, Rgb::WHITE, Some(Rgb::GREY));
        f.text(x0 + pw / 2.0, y0 - 8.0, 11.0, Anchor::Middle, name.clone());
        for &t in &x_ticks {
            f.line(sx(t), y0 + ph, sx(t), y0 + ph + 4.0, Rgb::BLACK, 0.8);
            f.text(sx(t), y0 + ph + 15.0, 9.0, Anchor::Middle, tick_label(t));
        }
        for t in ticks(yl, yh) {
            f.line(x0 - 4.0, sy(t), x0, sy(t), Rgb::BLACK, 0.8);
            f.text(x0 - 6.0, sy(t) + 3.0, 9.0, Anchor::End, tick_label(t));
        }
        f.text(x0 + pw / 2.0, y0 + ph + 32.0, 10.0, Anchor::Middle, x_label);
        let colour = category_colour(k);
        for i in 1..x.len().min(y.len()) {
            if y[i - 1].is_finite() && y[i].is_finite() {
                f.line(sx(x[i - 1]), sy(y[i - 1]), sx(x[i]), sy(y[i]), colour, 1.6);
            }
        }
        for i in 0..x.len().min(y.len()) {
            if y[i].is_finite() {
                f.circle(sx(x[i]), sy(y[i]), 2.2, colour, 1.0);
            }
        }
    }
    f
}

/// Horizontal stacked bars: one bar per row (labelled with its cell count), split into the shares of
/// `segments` (`counts[r][s]`), with a legend. Segment colours follow `colours`.
pub fn stacked_bars(title: &str, rows: &[String], segments: &[String], colours: &[Rgb], counts: &[Vec<usize>]) -> Figure {
    let bar_w = 360.0;
    let bar_h = 18.0;
    let label_w = 10.0 + 6.5 * rows.iter().map(|r| r.chars().count()).max().unwrap_or(1) as f64;
    let legend_w = 30.0 + 6.5 * segments.iter().map(|s| s.chars().count()).max().unwrap_or(1) as f64;
    let (x0, y0) = (label_w + 10.0, 50.0);
    let height = (y0 + rows.len() as f64 * (bar_h + 8.0) + 50.0).max(y0 + segments.len() as f64 * 15.0 + 20.0);
    let mut f = Figure::new(x0 + bar_w + 70.0 + legend_w, height);
    f.text(f.width / 2.0, 22.0, 13.0, Anchor::Middle, title);
    for (r, name) in rows.iter().enumerate() {
        let y = y0 + r as f64 * (bar_h + 8.0);
        let total: usize = counts[r].iter().sum();
        f.text(x0 - 6.0, y + bar_h / 2.0 + 4.0, 10.0, Anchor::End, name.clone());
        let mut x = x0;
        for (s, &c) in counts[r].iter().enumerate() {
            if c == 0 || total == 0 {
                continue;
            }
            let w = bar_w * c as f64 / total as f64;
            f.rect(x, y, w, bar_h, colours[s], Some(Rgb::WHITE));
            if w > 28.0 {
                let share = 100.0 * c as f64 / total as f64;
                let ink = if luminance(colours[s]) > 0.55 { Rgb::BLACK } else { Rgb::WHITE };
                f.text_coloured(x + w / 2.0, y + bar_h / 2.0 + 3.5, 9.0, Anchor::Middle, ink, format!("{share:.0}%"));
            }
            x += w;
        }
        f.text(x0 + bar_w + 6.0, y + bar_h / 2.0 + 4.0, 9.0, Anchor::Start, format!("n = {total}"));
    }
    let axis_y = y0 + rows.len() as f64 * (bar_h + 8.0);
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        f.line(x0 + t * bar_w, axis_y, x0 + t * bar_w, axis_y + 4.0, Rgb::BLACK, 0.8);
        f.text(x0 + t * bar_w, axis_y + 15.0, 9.0, Anchor::Middle, format!("{:.0}%", t * 100.0));
    }
    f.text(x0 + bar_w / 2.0, axis_y + 32.0, 10.0, Anchor::Middle, "share of the type's target cells");
    let lx = x0 + bar_w + 60.0;
    for (s, name) in segments.iter().enumerate() {
        let ly = y0 + 6.0 + s as f64 * 15.0;
        f.rect(lx, ly - 8.0, 10.0, 10.0, colours[s], None);
        f.text(lx + 15.0, ly + 1.0, 10.0, Anchor::Start, name.clone());
    }
    f
}

fn luminance(c: Rgb) -> f64 {
    (0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64) / 255.0
}

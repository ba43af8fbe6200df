//! Small figures without a plotting stack: a figure is a list of shapes in points, written as SVG
//! (vector, exact text) and, with the `plots` feature, as PNG (the SVG rendered at 2x by `resvg`, with
//! anti-aliased text in the embedded DejaVu Sans).

use crate::error::{Error, Result};
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    pub const BLACK: Rgb = Rgb(0, 0, 0);
    pub const WHITE: Rgb = Rgb(255, 255, 255);
    pub const GREY: Rgb = Rgb(150, 150, 150);
    pub const LIGHT: Rgb = Rgb(225, 225, 225);
    pub const RED: Rgb = Rgb(214, 39, 40);
    fn hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
}

/// 20 distinguishable colours (matplotlib's tab20 order: dark shades first).
pub fn category_colour(i: usize) -> Rgb {
    const P: [Rgb; 20] = [
        Rgb(31, 119, 180),
        Rgb(255, 127, 14),
        Rgb(44, 160, 44),
        Rgb(214, 39, 40),
        Rgb(148, 103, 189),
        Rgb(140, 86, 75),
        Rgb(227, 119, 194),
        Rgb(127, 127, 127),
        Rgb(188, 189, 34),
        Rgb(23, 190, 207),
        Rgb(174, 199, 232),
        Rgb(255, 187, 120),
        Rgb(152, 223, 138),
        Rgb(255, 152, 150),
        Rgb(197, 176, 213),
        Rgb(196, 156, 148),
        Rgb(247, 182, 210),
        Rgb(199, 199, 199),
        Rgb(219, 219, 141),
        Rgb(158, 218, 229),
    ];
    P[i % P.len()]
}

/// Viridis, linearly interpolated between 9 anchors; `t` in [0, 1].
pub fn viridis(t: f64) -> Rgb {
    const A: [(f64, f64, f64); 9] = [
        (68.0, 1.0, 84.0),
        (71.0, 44.0, 122.0),
        (59.0, 81.0, 139.0),
        (44.0, 113.0, 142.0),
        (33.0, 144.0, 141.0),
        (39.0, 173.0, 129.0),
        (92.0, 200.0, 99.0),
        (170.0, 220.0, 50.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * (A.len() - 1) as f64;
    let i = (t.floor() as usize).min(A.len() - 2);
    let f = t - i as f64;
    let m = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    Rgb(m(A[i].0, A[i + 1].0), m(A[i].1, A[i + 1].1), m(A[i].2, A[i + 1].2))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

#[derive(Debug, Clone)]
enum Shape {
    Rect {
        x: f64,
        y: f64,
        w: f64,
        h: f64,
        fill: Rgb,
        stroke: Option<Rgb>,
    },
    Circle {
        x: f64,
        y: f64,
        r: f64,
        fill: Rgb,
        alpha: f64,
    },
    Line {
        x1: f64,
        y1: f64,
        x2: f64,
        y2: f64,
        colour: Rgb,
        width: f64,
    },
    /// `vertical`: rotated 90° counter-clockwise (reads bottom to top).
    Text {
        x: f64,
        y: f64,
        size: f64,
        anchor: Anchor,
        colour: Rgb,
        text: String,
        vertical: bool,
    },
}

/// A figure in points (1 pt = 1 SVG user unit = 2 PNG pixels).
#[derive(Debug, Clone)]
pub struct Figure {
    pub width: f64,
    pub height: f64,
    shapes: Vec<Shape>,
}

impl Figure {
    pub fn new(width: f64, height: f64) -> Self {
        Figure { width, height, shapes: vec![Shape::Rect { x: 0.0, y: 0.0, w: width, h: height, fill: Rgb::WHITE, stroke: None }] }
    }
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: Rgb, stroke: Option<Rgb>) {
        self.shapes.push(Shape::Rect { x, y, w, h, fill, stroke });
    }
    pub fn circle(&mut self, x: f64, y: f64, r: f64, fill: Rgb, alpha: f64) {
        self.shapes.push(Shape::Circle { x, y, r, fill, alpha });
    }
    pub fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, colour: Rgb, width: f64) {
        self.shapes.push(Shape::Line { x1, y1, x2, y2, colour, width });
    }
    pub fn text(&mut self, x: f64, y: f64, size: f64, anchor: Anchor, text: impl Into<String>) {
        self.shapes.push(Shape::Text { x, y, size, anchor, colour: Rgb::BLACK, text: text.into(), vertical: false });
    }
    pub fn text_coloured(&mut self, x: f64, y: f64, size: f64, anchor: Anchor, colour: Rgb, text: impl Into<String>) {
        self.shapes.push(Shape::Text { x, y, size, anchor, colour, text: text.into(), vertical: false });
    }
    pub fn vertical_text(&mut self, x: f64, y: f64, size: f64, anchor: Anchor, text: impl Into<String>) {
        self.shapes.push(Shape::Text { x, y, size, anchor, colour: Rgb::BLACK, text: text.into(), vertical: true });
    }

    pub fn svg(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#,
            w = self.width,
            h = self.height
        );
        for sh in &self.shapes {
            let _ = match sh {
                Shape::Rect { x, y, w, h, fill, stroke } => writeln!(
                    s,
                    r#"<rect x="{x:.2}" y="{y:.2}" width="{w:.2}" height="{h:.2}" fill="{}"{}/>"#,
                    fill.hex(),
                    stroke.map(|c| format!(r#" stroke="{}" stroke-width="0.8""#, c.hex())).unwrap_or_default()
                ),
                Shape::Circle { x, y, r, fill, alpha } => {
                    writeln!(s, r#"<circle cx="{x:.2}" cy="{y:.2}" r="{r:.2}" fill="{}" fill-opacity="{alpha:.2}"/>"#, fill.hex())
                }
                Shape::Line { x1, y1, x2, y2, colour, width } => writeln!(
                    s,
                    r#"<line x1="{x1:.2}" y1="{y1:.2}" x2="{x2:.2}" y2="{y2:.2}" stroke="{}" stroke-width="{width:.2}"/>"#,
                    colour.hex()
                ),
                Shape::Text { x, y, size, anchor, colour, text, vertical } => {
                    let a = match anchor {
                        Anchor::Start => "start",
                        Anchor::Middle => "middle",
                        Anchor::End => "end",
                    };
                    let rot = if *vertical { format!(r#" transform="rotate(-90 {x:.2} {y:.2})""#) } else { String::new() };
                    writeln!(
                        s,
                        r#"<text x="{x:.2}" y="{y:.2}" font-size="{size:.1}" text-anchor="{a}" fill="{}"{rot}>{}</text>"#,
                        colour.hex(),
                        escape(text)
                    )
                }
            };
        }
        s.push_str("</svg>\n");
        s
    }

    /// The figure as PNG bytes at `scale` pixels per point: the SVG rendered by resvg, its text in
    /// the embedded DejaVu Sans (no system fonts are read, so every machine draws the same pixels).
    #[cfg(feature = "plots")]
    pub fn png(&self, scale: f32) -> std::result::Result<Vec<u8>, String> {
        render_png(&self.svg(), scale)
    }

    /// Write `<stem>.svg` and (with the `plots` feature) `<stem>.png`, each complete or not at all.
    pub fn save(&self, stem: &Path) -> Result<()> {
        let svg = stem.with_extension("svg");
        crate::out::write_atomic(&svg, |w| w.write_all(self.svg().as_bytes()))?;
        #[cfg(feature = "plots")]
        {
            let png_path = stem.with_extension("png");
            let bytes = self.png(2.0).map_err(|m| Error::format(&png_path, m))?;
            crate::out::write_atomic(&png_path, |out| out.write_all(&bytes))?;
        }
        Ok(())
    }
}

/// Render SVG text to PNG bytes at `scale` pixels per SVG unit, on white.
#[cfg(feature = "plots")]
pub fn render_png(svg: &str, scale: f32) -> std::result::Result<Vec<u8>, String> {
    use resvg::{tiny_skia, usvg};
    use std::sync::{Arc, OnceLock};
    static FONTS: OnceLock<Arc<usvg::fontdb::Database>> = OnceLock::new();
    let fonts = FONTS.get_or_init(|| {
        let mut db = usvg::fontdb::Database::new();
        db.load_font_data(include_bytes!("../../assets/fonts/DejaVuSans.ttf").to_vec());
        db.set_sans_serif_family("DejaVu Sans");
        Arc::new(db)
    });
    let opt = usvg::Options { fontdb: fonts.clone(), font_family: "DejaVu Sans".into(), ..Default::default() };
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| format!("the figure's SVG does not parse: {e}"))?;
    let size = tree.size().to_int_size().scale_by(scale).ok_or("the figure has no size")?;
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("the figure is too large to rasterise")?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(&tree, tiny_skia::Transform::from_scale(scale, scale), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| format!("PNG encoding failed: {e}"))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// About 5 round tick positions covering [lo, hi].
pub fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut v = Vec::new();
    while t <= hi + step * 1e-9 {
        v.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    v
}

pub fn tick_label(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// A heatmap: `values[r * cols + c]`, rows top to bottom; `marks` are (row, col, text) drawn in cells;
/// `axes` titles the rows and the columns. `row_scaled`: colours run from each row's minimum to its
/// maximum (for rows on different scales).
#[allow(clippy::too_many_arguments)]
pub fn heatmap(
    title: &str,
    rows: &[String],
    cols: &[String],
    values: &[f64],
    marks: &[(usize, usize, String)],
    legend: &str,
    row_scaled: bool,
    axes: (&str, &str),
) -> Figure {
    let cell = 28.0;
    let label_w = 8.0 + 5.6 * rows.iter().map(|r| r.chars().count()).max().unwrap_or(1) as f64;
    let label_h = 8.0 + 5.4 * cols.iter().map(|r| r.chars().count()).max().unwrap_or(1) as f64;
    let (x0, y0) = (label_w + 30.0, 40.0);
    let (gw, gh) = (cell * cols.len() as f64, cell * rows.len() as f64);
    let mut f = Figure::new((x0 + gw + 170.0).max(20.0 + 7.0 * title.chars().count() as f64), y0 + gh + label_h + 30.0);
    f.vertical_text(14.0, y0 + gh / 2.0, 11.0, Anchor::Middle, axes.0);
    f.text(x0 + gw / 2.0, y0 + gh + label_h + 16.0, 11.0, Anchor::Middle, axes.1);
    f.text(f.width / 2.0, 22.0, 13.0, Anchor::Middle, title);
    let range = |vals: &[f64]| {
        let lo = vals.iter().copied().filter(|v| v.is_finite()).fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().filter(|v| v.is_finite()).fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    let (lo, hi) = range(values);
    let nc = cols.len();
    let norm = |r: usize, v: f64| {
        let (lo, hi) = if row_scaled { range(&values[r * nc..(r + 1) * nc]) } else { (lo, hi) };
        if hi > lo { (v - lo) / (hi - lo) } else { 0.5 }
    };
    for r in 0..rows.len() {
        for c in 0..cols.len() {
            let v = values[r * cols.len() + c];
            let fill = if v.is_finite() { viridis(norm(r, v)) } else { Rgb::LIGHT };
            f.rect(x0 + c as f64 * cell, y0 + r as f64 * cell, cell, cell, fill, Some(Rgb::WHITE));
        }
        f.text(x0 - 5.0, y0 + (r as f64 + 0.5) * cell + 4.0, 10.0, Anchor::End, rows[r].clone());
    }
    for (c, name) in cols.iter().enumerate() {
        f.vertical_text(x0 + (c as f64 + 0.5) * cell + 4.0, y0 + gh + 6.0, 10.0, Anchor::End, name.clone());
    }
    for (r, c, t) in marks {
        let v = values[r * cols.len() + c];
        let colour = if norm(*r, v) > 0.6 { Rgb::BLACK } else { Rgb::WHITE };
        f.text_coloured(x0 + (*c as f64 + 0.5) * cell, y0 + (*r as f64 + 0.5) * cell + 4.0, 11.0, Anchor::Middle, colour, t.clone());
    }
    // Colour bar.
    let (bx, bh) = (x0 + gw + 20.0, gh.max(80.0));
    let x_legend = bx + 16.0 + 6.0 * if row_scaled { 7.0 } else { 5.0 };
    for i in 0..50 {
        let t = 1.0 - i as f64 / 50.0;
        f.rect(bx, y0 + i as f64 * bh / 50.0, 12.0, bh / 50.0 + 0.3, viridis(t), None);
    }
    if row_scaled {
        f.text(bx + 16.0, y0 + 8.0, 9.0, Anchor::Start, "row max");
        f.text(bx + 16.0, y0 + bh, 9.0, Anchor::Start, "row min");
    } else if lo.is_finite() {
        f.text(bx + 16.0, y0 + 8.0, 9.0, Anchor::Start, tick_label(hi));
        f.text(bx + 16.0, y0 + bh, 9.0, Anchor::Start, tick_label(lo));
    }
    f.vertical_text(x_legend + 8.0, y0 + bh / 2.0, 10.0, Anchor::Middle, legend);
    f
}

/// A scatter plot of points in groups (one colour each, with a legend); `labels` are (point, text).
pub struct Scatter<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub x: &'a [f64],
    pub y: &'a [f64],
    pub group: &'a [usize],
    pub group_names: &'a [String],
    pub labels: &'a [(usize, String)],
    pub point_size: f64,
    /// Show the axes' ticks (off for embeddings, whose coordinates mean nothing).
    pub axes: bool,
    /// Colour of each group (None: the categorical palette).
    pub palette: Option<&'a [Rgb]>,
}

impl Scatter<'_> {
    pub fn figure(&self) -> Figure {
        let (pw, ph) = (460.0, 400.0);
        let legend_w = 20.0 + 6.5 * self.group_names.iter().map(|g| g.chars().count()).max().unwrap_or(0) as f64;
        let colour = |g: usize| self.palette.and_then(|p| p.get(g).copied()).unwrap_or_else(|| category_colour(g));
        let (x0, y0) = (60.0, 40.0);
        let mut f = Figure::new(x0 + pw + 30.0 + legend_w, y0 + ph + 50.0);
        f.text(x0 + pw / 2.0, 22.0, 13.0, Anchor::Middle, self.title);
        let range = |v: &[f64]| {
            let lo = v.iter().copied().filter(|x| x.is_finite()).fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().filter(|x| x.is_finite()).fold(f64::NEG_INFINITY, f64::max);
            if !lo.is_finite() {
                (0.0, 1.0)
            } else if hi - lo < 1e-12 {
                (lo - 0.5, hi + 0.5)
            } else {
                let pad = 0.04 * (hi - lo);
                (lo - pad, hi + pad)
            }
        };
        let (xl, xh) = range(self.x);
        let (yl, yh) = range(self.y);
        let sx = |v: f64| x0 + (v - xl) / (xh - xl) * pw;
        let sy = |v: f64| y0 + ph - (v - yl) / (yh - yl) * ph;
        f.rect(x0, y0, pw, ph, Rgb::WHITE, Some(Rgb::GREY));
        if self.axes {
            for t in ticks(xl, xh) {
                f.line(sx(t), y0 + ph, sx(t), y0 + ph + 4.0, Rgb::BLACK, 0.8);
                f.text(sx(t), y0 + ph + 15.0, 9.0, Anchor::Middle, tick_label(t));
            }
            for t in ticks(yl, yh) {
                f.line(x0 - 4.0, sy(t), x0, sy(t), Rgb::BLACK, 0.8);
                f.text(x0 - 6.0, sy(t) + 3.0, 9.0, Anchor::End, tick_label(t));
            }
        }
        f.text(x0 + pw / 2.0, y0 + ph + 35.0, 11.0, Anchor::Middle, self.x_label);
        f.vertical_text(18.0, y0 + ph / 2.0, 11.0, Anchor::Middle, self.y_label);
        for i in 0..self.x.len() {
            if self.x[i].is_finite() && self.y[i].is_finite() {
                f.circle(sx(self.x[i]), sy(self.y[i]), self.point_size, colour(self.group[i]), 0.7);
            }
        }
        // Labels: stacked in a column beside their points (left half: text to the right, and the
        // other way round), joined by a thin line, so that crowded points stay readable.
        let mut slots = [0usize; 2];
        for (i, t) in self.labels {
            let (px, py) = (sx(self.x[*i]), sy(self.y[*i]));
            f.circle(px, py, self.point_size + 1.0, Rgb::BLACK, 1.0);
            let right = px < x0 + pw / 2.0;
            let side = usize::from(right);
            let ty = (py + 14.0 + 12.0 * slots[side] as f64).min(y0 + ph - 4.0);
            slots[side] += 1;
            let tx = if right { px + 18.0 } else { px - 18.0 };
            f.line(px, py, tx, ty - 3.0, Rgb::GREY, 0.5);
            f.text(tx + if right { 2.0 } else { -2.0 }, ty, 9.0, if right { Anchor::Start } else { Anchor::End }, t.clone());
        }
        for (g, name) in self.group_names.iter().enumerate() {
            let ly = y0 + 10.0 + g as f64 * 15.0;
            f.circle(x0 + pw + 20.0, ly, 4.0, colour(g), 1.0);
            f.text(x0 + pw + 28.0, ly + 3.5, 10.0, Anchor::Start, name.clone());
        }
        f
    }
}

/// Whether a file starts with the PNG signature, for tests.
pub fn is_png(path: &Path) -> Result<bool> {
    let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(b.starts_with(&[0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n']))
}

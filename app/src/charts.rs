//! Charts: charming chart definitions for the dashboard, and the component that draws one with
//! ECharts once the page is hydrated. The server renders an empty, sized box (and the
//! dashboard shows the same figures as tables for pages read without JavaScript).

use charming::{
    component::{Axis, Grid, Legend, VisualMap},
    element::{AxisType, Orient, Symbol, Tooltip, Trigger},
    series::{Bar, Heatmap, Line, Scatter},
    Chart,
};
use leptos::prelude::*;

/// Draws `chart` into a box `height` pixels tall and as wide as its container.
#[component]
pub fn EChart(id: &'static str, chart: Chart, #[prop(default = 300)] height: u32) -> impl IntoView {
    #[cfg(feature = "hydrate")]
    {
        let chart = chart.clone();
        Effect::new(move |_| draw(id, chart.clone(), 0));
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = chart;
    view! {
        <div
            id=id
            class="w-full"
            style=format!("height:{height}px")
            data-testid="chart"
            data-chart=id
        ></div>
    }
}

/// Renders once `echarts` (a deferred script) is there; retries a few times if it is not yet.
#[cfg(feature = "hydrate")]
fn draw(id: &'static str, chart: Chart, attempt: u32) {
    let ready = web_sys::window()
        .and_then(|w| js_sys::Reflect::has(&w, &"echarts".into()).ok())
        .unwrap_or(false);
    if ready {
        if let Err(e) = charming::WasmRenderer::new_opt(None, None).render(id, &chart) {
            leptos::logging::error!("chart {id}: {e:?}");
        }
    } else if attempt < 50 {
        set_timeout(
            move || draw(id, chart, attempt + 1),
            std::time::Duration::from_millis(100),
        );
    } else {
        leptos::logging::error!("chart {id}: echarts did not load");
    }
}

fn base() -> Chart {
    Chart::new()
        .animation(false)
        .tooltip(Tooltip::new().trigger(Trigger::Axis))
        .grid(Grid::new().left(48).right(16).top(24).bottom(56))
}

/// Vertical bars, one per label.
pub fn bars(labels: Vec<String>, values: Vec<f64>, name: &str) -> Chart {
    base()
        .x_axis(
            Axis::new()
                .type_(AxisType::Category)
                .data(labels)
                .axis_label(charming::element::AxisLabel::new().rotate(30)),
        )
        .y_axis(Axis::new().type_(AxisType::Value))
        .series(Bar::new().name(name).data(values))
}

/// A line over time-ordered labels.
pub fn line(labels: Vec<String>, values: Vec<f64>, name: &str) -> Chart {
    base()
        .x_axis(Axis::new().type_(AxisType::Category).data(labels))
        .y_axis(Axis::new().type_(AxisType::Value))
        .series(Line::new().name(name).data(values))
}

/// The confusion matrix as a heatmap: rows true category, columns predicted.
pub fn confusion(labels: Vec<String>, predicted: Vec<String>, matrix: &[Vec<u64>]) -> Chart {
    let max = matrix.iter().flatten().copied().max().unwrap_or(1).max(1);
    // Each cell is one `[column, row, count]` frame.
    let data: Vec<Vec<charming::datatype::DataPoint>> = matrix
        .iter()
        .enumerate()
        .flat_map(|(row, cells)| {
            cells.iter().enumerate().map(move |(col, &n)| {
                vec![(col as f64).into(), (row as f64).into(), (n as f64).into()]
            })
        })
        .collect();
    Chart::new()
        .animation(false)
        .tooltip(Tooltip::new())
        .grid(Grid::new().left(96).right(16).top(16).bottom(96))
        .x_axis(
            Axis::new()
                .type_(AxisType::Category)
                .name("predicted")
                .data(predicted)
                .axis_label(charming::element::AxisLabel::new().rotate(45)),
        )
        .y_axis(
            Axis::new()
                .type_(AxisType::Category)
                .name("true")
                .data(labels),
        )
        .visual_map(
            VisualMap::new()
                .min(0)
                .max(max as f64)
                .calculable(true)
                .orient(Orient::Horizontal)
                .left("center")
                .bottom(0),
        )
        .series(Heatmap::new().name("images").data(data))
}

/// Points coloured by category; misclassified ones get a triangle drawn over them (a series
/// of their own, so the legend can hide or show them).
pub fn embedding_map(points: &[crate::types::MapPoint]) -> Chart {
    let mut categories: Vec<&str> = points.iter().map(|p| p.category.as_str()).collect();
    categories.sort_unstable();
    categories.dedup();
    let mut chart = Chart::new()
        .animation(false)
        .tooltip(Tooltip::new())
        .legend(Legend::new().top(0))
        .grid(Grid::new().left(40).right(16).top(48).bottom(32))
        .x_axis(Axis::new().type_(AxisType::Value).name("PC1"))
        .y_axis(Axis::new().type_(AxisType::Value).name("PC2"));
    for c in &categories {
        let data: Vec<Vec<f64>> = points
            .iter()
            .filter(|p| p.category == *c)
            .map(|p| vec![p.x as f64, p.y as f64])
            .collect();
        chart = chart.series(Scatter::new().name(*c).symbol_size(7).data(data));
    }
    let wrong: Vec<Vec<f64>> = points
        .iter()
        .filter(|p| !p.correct)
        .map(|p| vec![p.x as f64, p.y as f64])
        .collect();
    chart.series(
        Scatter::new()
            .name("misclassified")
            .symbol(Symbol::Triangle)
            .symbol_size(13)
            .item_style(
                charming::element::ItemStyle::new()
                    .color("rgba(0,0,0,0)")
                    .border_color("#111827")
                    .border_width(1.5),
            )
            .data(wrong),
    )
}

//! Sweeps: the pingpong workload at several connection counts, for several protocols,
//! each against a freshly spawned server; a table of the results, and an SVG plot.

use std::time::Duration;

use plotters::coord::ranged1d::Ranged;
use plotters::prelude::*;

use crate::report::Report;
use crate::server::Spawned;
use crate::{workload, Args, Protocol};

pub async fn run(args: &Args) -> anyhow::Result<bool> {
    if !args.spawn {
        anyhow::bail!("--sweep starts its own servers: add --spawn");
    }
    let mut results: Vec<(Protocol, Vec<Report>)> = Vec::new();
    let mut clean = true;
    for &p in &args.protocols {
        let mut reports = Vec::new();
        for &n in &args.sweep {
            let mut a = args.clone();
            a.protocol = p;
            a.connections = n;
            let server = Spawned::start(&a, p).await?;
            let addr = server.addr.clone();
            let r = workload::run(
                &a,
                &addr,
                Some(&server),
                Duration::from_secs_f64(a.duration),
            )
            .await?;
            clean &= r.violations == 0 && r.errors == 0;
            eprintln!(
                "{:?} c={n}: {:.0} ops/s p99 {:?} us",
                p, r.ops_per_sec, r.latency_us_p99
            );
            reports.push(r);
        }
        results.push((p, reports));
    }
    if args.json {
        let all: Vec<&Report> = results.iter().flat_map(|(_, r)| r).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        println!("protocol  conns  depth  ops/s      p50us  p99us  p99.9us  cpu us/op  errors  violations");
        for (p, reports) in &results {
            for r in reports {
                println!(
                    "{:<9} {:<6} {:<6} {:<10.0} {:<6} {:<6} {:<8} {:<10} {:<7} {}",
                    format!("{p:?}").to_lowercase(),
                    r.connections,
                    r.depth,
                    r.ops_per_sec,
                    r.latency_us_p50.unwrap_or(0),
                    r.latency_us_p99.unwrap_or(0),
                    r.latency_us_p999.unwrap_or(0),
                    r.server_cpu_us_per_op
                        .map_or("-".into(), |c| format!("{c:.2}")),
                    r.errors,
                    r.violations
                );
            }
        }
    }
    if let Some(path) = &args.plot {
        plot(path, &results)?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(clean)
}

fn color(p: Protocol) -> RGBColor {
    match p {
        Protocol::Native => RGBColor(31, 119, 180),
        Protocol::Legacy => RGBColor(44, 160, 44),
        Protocol::Redis => RGBColor(214, 39, 40),
        Protocol::Etcd => RGBColor(148, 103, 189),
    }
}

fn plot(path: &std::path::Path, results: &[(Protocol, Vec<Report>)]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let max_ops = results
        .iter()
        .flat_map(|(_, r)| r)
        .map(|r| r.ops_per_sec)
        .fold(1.0, f64::max);
    let max_c = results
        .iter()
        .flat_map(|(_, r)| r)
        .map(|r| r.connections)
        .max()
        .unwrap_or(1) as f64;
    let mut chart = ChartBuilder::on(&left)
        .caption("throughput (ops/s) against connections", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..max_c * 1.2).log_scale(), 0f64..max_ops * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("ops/s")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let throughput = results.iter().map(|(p, reports)| {
        let pts = reports
            .iter()
            .map(|r| (r.connections as f64, r.ops_per_sec))
            .collect();
        (*p, pts)
    });
    // The lines peak in the middle and fall to the right: the legend goes below the peak.
    draw_lines(&mut chart, throughput, SeriesLabelPosition::LowerMiddle)?;

    // Latency percentiles at the largest connection count of each protocol.
    let quantiles = [("p50", 0usize), ("p99", 1), ("p99.9", 2)];
    let max_lat = results
        .iter()
        .filter_map(|(_, r)| r.last())
        .filter_map(|r| r.latency_us_p999)
        .max()
        .unwrap_or(1) as f64;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            format!("latency (us) at {} connections", max_c as usize),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        // Linear: three points per line, and a log axis crowded its labels.
        .build_cartesian_2d(0f64..2.2, 0f64..max_lat * 1.15)?;
    chart
        .configure_mesh()
        .x_labels(3)
        .x_label_formatter(&|x| {
            quantiles
                .iter()
                .find(|q| (q.1 as f64 - x).abs() < 0.01)
                .map_or(String::new(), |q| q.0.to_string())
        })
        .y_desc("microseconds")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let latency = results.iter().filter_map(|(p, reports)| {
        let r = reports.last()?;
        let vals = [r.latency_us_p50, r.latency_us_p99, r.latency_us_p999];
        let pts = vals
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i as f64, v.max(1) as f64)))
            .collect();
        Some((*p, pts))
    });
    draw_lines(&mut chart, latency, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

/// One line with points per protocol, and the legend.
fn draw_lines<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    lines: impl Iterator<Item = (Protocol, Vec<(f64, f64)>)>,
    legend: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (p, pts) in lines {
        let c = color(p);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(format!("{p:?}").to_lowercase())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|pt| Circle::new(pt, 4, c.filled())))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

package benchpeers

import (
	"fmt"
	"math"
	"os"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

type series struct {
	label string
	key   string
	scale float64
}

// WriteChart draws the figures as grouped bars per peer into a PNG:
// TCP throughput, request/response latency, small-UDP rate.
func (r *Results) WriteChart(path string) error {
	var peers []*PeerResult
	for _, p := range r.Peers {
		if len(p.Metrics) > 0 {
			peers = append(peers, p)
		}
	}
	if len(peers) == 0 {
		return fmt.Errorf("chart: nothing was measured")
	}
	names := make([]string, len(peers))
	for i, p := range peers {
		names[i] = p.Name
	}
	type panel struct {
		title, ylabel, format string
		series                []series
	}
	var panels []panel
	small := slices.Min(r.Settings.MTUs)
	for _, mtu := range r.Settings.MTUs {
		ss := []series{
			{"guest->host", TCPKey("g2h", mtu), 1},
			{"host->guest", TCPKey("h2g", mtu), 1},
		}
		if mtu == small && r.Settings.Idle > 0 {
			ss = append(ss,
				series{"guest->host, 1 VM (idle run)", IdleKey(small, 0), 1},
				series{fmt.Sprintf("... with %d idle VMs attached", r.Settings.Idle), IdleKey(small, r.Settings.Idle), 1})
		}
		panels = append(panels, panel{fmt.Sprintf("TCP throughput, MTU %d (iperf3)", mtu), "Gbit/s", "%.2f", ss})
	}
	panels = append(panels,
		panel{"Request/response over TCP, 1 byte, one in flight (lower is better)", "round trip, µs", "%.0f", []series{
			{"median", MetricRRp50, 1}, {"99th percentile", MetricRRp99, 1}}},
		panel{"Small UDP: 64-byte payloads guest->host, as fast as the guest sends", "thousand datagrams/s delivered", "%.0f", []series{
			{"delivered", MetricUDP64, 1e-3}}})
	plots := make([][]*plot.Plot, len(panels))
	for row, pn := range panels {
		p := plot.New()
		p.Title.Text = pn.title
		p.Y.Label.Text = pn.ylabel
		p.Y.Min = 0
		p.Legend.Top = true
		p.Legend.Left = false
		p.Add(plotter.NewGrid())
		width := vg.Points(min(22, 340/float64(len(peers)*len(pn.series))))
		top := 0.0
		for i, s := range pn.series {
			vals := make(plotter.Values, len(peers))
			var labels plotter.XYLabels
			for j, pr := range peers {
				vals[j] = pr.Get(s.key) * s.scale
				top = max(top, vals[j])
				if vals[j] > 0 {
					labels.XYs = append(labels.XYs, plotter.XY{X: float64(j), Y: vals[j]})
					labels.Labels = append(labels.Labels, fmt.Sprintf(pn.format, vals[j]))
				}
			}
			if len(labels.XYs) == 0 {
				continue
			}
			bars, err := plotter.NewBarChart(vals, width)
			if err != nil {
				return err
			}
			bars.LineStyle.Width = 0
			bars.Color = plotutil.Color(i)
			bars.Offset = vg.Length(float64(i)-float64(len(pn.series)-1)/2) * width
			p.Add(bars)
			p.Legend.Add(s.label, bars)
			// The value above each bar: user-space figures are small
			// beside the kernel's.
			lab, err := plotter.NewLabels(labels)
			if err != nil {
				return err
			}
			for k := range lab.TextStyle {
				lab.TextStyle[k].Font.Size = vg.Points(7)
				lab.TextStyle[k].Rotation = math.Pi / 2
				lab.TextStyle[k].XAlign = draw.XLeft   // along the bar, upwards
				lab.TextStyle[k].YAlign = draw.YCenter // across it, centred
			}
			lab.Offset = vg.Point{X: bars.Offset, Y: 3}
			p.Add(lab)
		}
		p.Y.Max = top * 1.45 // room for the labels and the legend
		p.NominalX(names...)
		plots[row] = []*plot.Plot{p}
	}
	w, h := 11*vg.Inch, vg.Length(len(panels))*4*vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	t := draw.Tiles{Rows: len(panels), Cols: 1, PadX: vg.Millimeter, PadY: 8 * vg.Millimeter,
		PadTop: 4 * vg.Millimeter, PadBottom: 4 * vg.Millimeter, PadLeft: 4 * vg.Millimeter, PadRight: 4 * vg.Millimeter}
	canvases := plot.Align(plots, t, dc)
	for row := range plots {
		plots[row][0].Draw(canvases[row][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

package meshlettest

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is a parsed Prometheus text exposition (a /metrics page), keyed by metric family name.
type Metrics map[string]*dto.MetricFamily

// ParseMetrics reads a Prometheus text exposition with expfmt.
func ParseMetrics(r io.Reader) (Metrics, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return nil, err
	}
	return Metrics(fams), nil
}

// Scrape GETs url (a /metrics page; client nil: http.DefaultClient) and parses it.
func Scrape(ctx context.Context, client *http.Client, url string) (Metrics, error) {
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	m, err := ParseMetrics(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	return m, nil
}

// Labels returns the labels of m as a map.
func Labels(m *dto.Metric) map[string]string {
	l := make(map[string]string, len(m.GetLabel()))
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

// LabelsMatch reports whether have has every pair of want; a pair with an empty value also matches a label that
// is absent.
func LabelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// Sample is one sample line of an exposition: a series name (a histogram's or summary's include _bucket, _sum
// and _count), its labels (le or quantile included) and its value.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Samples returns the samples of the series called name (exact; for a histogram or summary family f also
// f_sum, f_count and f_bucket or f as quantiles) in exposition order.
func (m Metrics) Samples(name string) []Sample {
	var out []Sample
	if f, ok := m[name]; ok {
		for _, s := range f.GetMetric() {
			l := Labels(s)
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out = append(out, Sample{name, l, s.GetCounter().GetValue()})
			case dto.MetricType_GAUGE:
				out = append(out, Sample{name, l, s.GetGauge().GetValue()})
			case dto.MetricType_UNTYPED:
				out = append(out, Sample{name, l, s.GetUntyped().GetValue()})
			case dto.MetricType_SUMMARY:
				for _, q := range s.GetSummary().GetQuantile() {
					out = append(out, Sample{name, with(l, model.QuantileLabel, formatFloat(q.GetQuantile())), q.GetValue()})
				}
			}
		}
		return out
	}
	for _, suffix := range []string{"_sum", "_count", "_bucket"} {
		base, ok := strings.CutSuffix(name, suffix)
		f := m[base]
		if !ok || f == nil {
			continue
		}
		for _, s := range f.GetMetric() {
			l := Labels(s)
			h, sm := s.GetHistogram(), s.GetSummary()
			switch {
			case f.GetType() == dto.MetricType_HISTOGRAM && suffix == "_sum":
				out = append(out, Sample{name, l, h.GetSampleSum()})
			case f.GetType() == dto.MetricType_HISTOGRAM && suffix == "_count":
				out = append(out, Sample{name, l, float64(h.GetSampleCount())})
			case f.GetType() == dto.MetricType_HISTOGRAM && suffix == "_bucket":
				for _, b := range h.GetBucket() {
					out = append(out, Sample{name, with(l, model.BucketLabel, formatFloat(b.GetUpperBound())), float64(b.GetCumulativeCount())})
				}
				out = append(out, Sample{name, with(l, model.BucketLabel, "+Inf"), float64(h.GetSampleCount())})
			case f.GetType() == dto.MetricType_SUMMARY && suffix == "_sum":
				out = append(out, Sample{name, l, sm.GetSampleSum()})
			case f.GetType() == dto.MetricType_SUMMARY && suffix == "_count":
				out = append(out, Sample{name, l, float64(sm.GetSampleCount())})
			}
		}
	}
	return out
}

// Sum adds the samples of the series called name (see Samples) whose labels include every pair of want (nil:
// all samples; an empty value also matches an absent label).
func (m Metrics) Sum(name string, want map[string]string) float64 {
	var sum float64
	for _, s := range m.Samples(name) {
		if LabelsMatch(s.Labels, want) {
			sum += s.Value
		}
	}
	return sum
}

// Lines returns the samples of name as exposition-like lines (`name{k="v"} value`), for failure messages.
func (m Metrics) Lines(name string) string {
	var b strings.Builder
	for _, s := range m.Samples(name) {
		ls := make(model.LabelSet, len(s.Labels))
		for k, v := range s.Labels {
			ls[model.LabelName(k)] = model.LabelValue(v)
		}
		fmt.Fprintf(&b, "\n\t%s%s %s", s.Name, ls, formatFloat(s.Value))
	}
	return b.String()
}

func with(l map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(l)+1)
	for lk, lv := range l {
		out[lk] = lv
	}
	out[k] = v
	return out
}

func formatFloat(f float64) string {
	if math.IsInf(f, +1) {
		return "+Inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

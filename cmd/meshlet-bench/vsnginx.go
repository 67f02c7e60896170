package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// The targets of issue 16 against nginx, the reference peer: meshlet's CPU per request and added p50 for one hop
// at most 2× nginx's, the whole mesh path (two meshlets over mutual TLS) at most 2.5× nginx's single hop.
const (
	targetOneVsNginx  = 2.0
	targetMeshVsNginx = 2.5
)

// nginxFigure compares, for one protocol, meshlet with nginx measured in the same run: CPU time per request in
// the throughput phase (utime+stime; nginx's master and worker, the two meshlets of the mesh path added up) and
// the added p50 (the path's p50 minus direct's), each with its ratio to nginx's (absent when nginx's figure is
// not positive).
type nginxFigure struct {
	Protocol        string   `json:"protocol"`
	NginxCPUus      float64  `json:"nginx_cpu_us_per_request"`
	NginxAddedP50us float64  `json:"nginx_added_p50_us"`
	OneCPUus        float64  `json:"one_cpu_us_per_request,omitempty"`
	OneCPURatio     *float64 `json:"one_cpu_ratio,omitempty"`
	OneAddedP50us   float64  `json:"one_added_p50_us,omitempty"`
	OneP50Ratio     *float64 `json:"one_added_p50_ratio,omitempty"`
	MeshCPUus       float64  `json:"mesh_cpu_us_per_request,omitempty"` // two-mtls, A+B
	MeshCPURatio    *float64 `json:"mesh_cpu_ratio,omitempty"`
	MeshAddedP50us  float64  `json:"mesh_added_p50_us,omitempty"`
	MeshP50Ratio    *float64 `json:"mesh_added_p50_ratio,omitempty"`
	// nginx's own mesh path (nginx-mtls, A+B): its ratio to nginx's one hop (what the mesh path target asks of
	// meshlet, asked of nginx), and meshlet's mesh path against it.
	NginxMeshCPUus       float64  `json:"nginx_mesh_cpu_us_per_request,omitempty"`
	NginxMeshCPURatio    *float64 `json:"nginx_mesh_cpu_ratio,omitempty"`
	MeshVsNginxMeshCPU   *float64 `json:"mesh_vs_nginx_mesh_cpu_ratio,omitempty"`
	NginxMeshAddedP50us  float64  `json:"nginx_mesh_added_p50_us,omitempty"`
	NginxMeshP50Ratio    *float64 `json:"nginx_mesh_added_p50_ratio,omitempty"`
	MeshVsNginxMeshP50us *float64 `json:"mesh_vs_nginx_mesh_added_p50_ratio,omitempty"`
}

// cpuPerRequestUs is the CPU time per request of r's processes added up, in µs; false when one was not sampled.
func cpuPerRequestUs(r *pathResult) (float64, bool) {
	if r == nil || r.Throughput == nil || r.Throughput.Requests == 0 || len(r.Meshlets) == 0 {
		return 0, false
	}
	var sum float64
	for _, m := range r.Meshlets {
		if m.RSSLoadKiB == 0 { // not sampled: the process was gone
			return 0, false
		}
		sum += m.CPUPer1k * 1000
	}
	return round1(sum), true
}

// compareNginx fills rep.VsNginx: per protocol where nginx was measured, 1 meshlet and 2 meshlets mTLS against it.
func (rep *report) compareNginx() {
	byKey := map[[2]string]*pathResult{}
	for _, r := range rep.Results {
		byKey[[2]string{r.Protocol, r.Path}] = r
	}
	for _, n := range rep.Results {
		if n.Path != string(pathNginx) || n.AddedP50us == nil {
			continue
		}
		cpu, ok := cpuPerRequestUs(n)
		if !ok {
			continue
		}
		f := nginxFigure{Protocol: n.Protocol, NginxCPUus: cpu, NginxAddedP50us: *n.AddedP50us}
		if one := byKey[[2]string{n.Protocol, string(pathOne)}]; one != nil && one.AddedP50us != nil {
			if c, ok := cpuPerRequestUs(one); ok {
				f.OneCPUus, f.OneCPURatio = c, ratio(c, f.NginxCPUus)
			}
			f.OneAddedP50us, f.OneP50Ratio = *one.AddedP50us, ratio(*one.AddedP50us, f.NginxAddedP50us)
		}
		if mesh := byKey[[2]string{n.Protocol, string(pathTwoTLS)}]; mesh != nil && mesh.AddedP50us != nil {
			if c, ok := cpuPerRequestUs(mesh); ok {
				f.MeshCPUus, f.MeshCPURatio = c, ratio(c, f.NginxCPUus)
			}
			f.MeshAddedP50us, f.MeshP50Ratio = *mesh.AddedP50us, ratio(*mesh.AddedP50us, f.NginxAddedP50us)
		}
		if nm := byKey[[2]string{n.Protocol, string(pathNginxTLS)}]; nm != nil && nm.AddedP50us != nil {
			if c, ok := cpuPerRequestUs(nm); ok {
				f.NginxMeshCPUus, f.NginxMeshCPURatio = c, ratio(c, f.NginxCPUus)
				if f.MeshCPUus != 0 {
					f.MeshVsNginxMeshCPU = ratio(f.MeshCPUus, c)
				}
			}
			f.NginxMeshAddedP50us, f.NginxMeshP50Ratio = *nm.AddedP50us, ratio(*nm.AddedP50us, f.NginxAddedP50us)
			if f.MeshP50Ratio != nil {
				f.MeshVsNginxMeshP50us = ratio(f.MeshAddedP50us, f.NginxMeshAddedP50us)
			}
		}
		rep.VsNginx = append(rep.VsNginx, f)
	}
}

// verdict renders ratio r against target: "1.42 (ok ≤2)" or "2.61 (OVER 2)"; "-" without a ratio.
func verdict(r *float64, target float64) string {
	if r == nil {
		return "-"
	}
	if *r <= target {
		return fmt.Sprintf("%.2f (ok ≤%g)", *r, target)
	}
	return fmt.Sprintf("%.2f (OVER %g)", *r, target)
}

func fmtUs(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

// writeVsNginx prints meshlet against nginx, one line per protocol.
func writeVsNginx(w io.Writer, rep *report) {
	if len(rep.VsNginx) == 0 {
		return
	}
	fmt.Fprintf(w, "\nmeshlet vs nginx %s (same backend, load and run; %s):\n"+
		"CPU: utime+stime per request in the throughput phase (nginx: master+worker; 2 meshlets mTLS: A+B); "+
		"+p50: p50 minus direct's, open loop.\nTargets: 1 meshlet ≤ %g× nginx, 2 meshlets mTLS (the whole mesh path) ≤ %g× nginx's one hop.\n",
		rep.Meta.Nginx, rep.Meta.Pinning, targetOneVsNginx, targetMeshVsNginx)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PROTOCOL\tCPU µs/req nginx\t1 meshlet\tratio\t2 meshlets mTLS\tratio\t+p50 µs nginx\t1 meshlet\tratio\t2 meshlets mTLS\tratio\t")
	for _, f := range rep.VsNginx {
		fmt.Fprintf(tw, "%-8s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%s\t%s\t%s\t%s\t\n", protocolInfo[protocol(f.Protocol)].label,
			fmtUs(f.NginxCPUus), fmtUs(f.OneCPUus), verdict(f.OneCPURatio, targetOneVsNginx),
			fmtUs(f.MeshCPUus), verdict(f.MeshCPURatio, targetMeshVsNginx),
			f.NginxAddedP50us, fmtUs(f.OneAddedP50us), verdict(f.OneP50Ratio, targetOneVsNginx),
			fmtUs(f.MeshAddedP50us), verdict(f.MeshP50Ratio, targetMeshVsNginx))
	}
	tw.Flush()
	for _, f := range rep.VsNginx {
		fmt.Fprintf(w, "nginx %s: %s\n", protocolInfo[protocol(f.Protocol)].label, nginxUpstreamNote[protocol(f.Protocol)])
	}
	writeVsNginxMesh(w, rep)
}

// writeVsNginxMesh prints, where nginx-mtls ran, nginx's own mesh path against its one hop (the mesh path target
// asked of nginx) and meshlet's mesh path against nginx's.
func writeVsNginxMesh(w io.Writer, rep *report) {
	var rows []nginxFigure
	for _, f := range rep.VsNginx {
		if f.NginxMeshCPUus != 0 || f.NginxMeshP50Ratio != nil {
			rows = append(rows, f)
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\nThe mesh path against nginx's own (2 nginx mTLS: app → nginx A → mutual TLS 1.3 → nginx B → backend, A+B):\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PROTOCOL\tCPU µs/req 2 nginx mTLS\tvs nginx one hop\t2 meshlets mTLS vs 2 nginx mTLS\t+p50 µs 2 nginx mTLS\tvs nginx one hop\t2 meshlets mTLS vs 2 nginx mTLS\t")
	x := func(r *float64) string {
		if r == nil {
			return "-"
		}
		return fmt.Sprintf("%.2f", *r)
	}
	for _, f := range rows {
		fmt.Fprintf(tw, "%-8s\t%s\t%s\t%s\t%.1f\t%s\t%s\t\n", protocolInfo[protocol(f.Protocol)].label,
			fmtUs(f.NginxMeshCPUus), x(f.NginxMeshCPURatio), x(f.MeshVsNginxMeshCPU),
			f.NginxMeshAddedP50us, x(f.NginxMeshP50Ratio), x(f.MeshVsNginxMeshP50us))
	}
	tw.Flush()
}

package consul

import (
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"
)

// ignoredFields lists the fields of a config entry that are set and that meshlet does not apply (README: the
// table of config entry fields), so that an operator is told instead of finding out. The discovery chain's
// entries (router, splitter, resolver) are compiled by Consul and refused whole when meshlet cannot honour them
// (chain.go); these are the entries meshlet reads field by field.
func ignoredFields(e api.ConfigEntry) []string {
	var out []string
	add := func(set bool, name string) {
		if set {
			out = append(out, name)
		}
	}
	switch e := e.(type) {
	case *api.ServiceConfigEntry:
		add(e.Mode != "", "Mode (meshlet's transparent mode is its own outbound.transparent)")
		add(e.TransparentProxy != nil, "TransparentProxy")
		add(e.MutualTLSMode != "", "MutualTLSMode (meshlet's is inbound.tls.mode)")
		add(e.MeshGateway.Mode != "", "MeshGateway")
		add(len(e.Expose.Paths) > 0 || e.Expose.Checks, "Expose (meshlet's are the registration's, with -sidecar-for)")
		add(e.ExternalSNI != "", "ExternalSNI")
		add(e.Destination != nil, "Destination (terminating gateways)")
		add(e.MaxInboundConnections != 0, "MaxInboundConnections (meshlet's is inbound.limits.max_connections)")
		add(e.LocalConnectTimeoutMs != 0, "LocalConnectTimeoutMs")
		add(e.LocalRequestTimeoutMs != 0, "LocalRequestTimeoutMs (meshlet's is inbound.timeout)")
		add(e.BalanceInboundConnections != "", "BalanceInboundConnections")
		add(e.RateLimits != nil, "RateLimits")
		add(len(e.EnvoyExtensions) > 0, "EnvoyExtensions")
		add(e.MaxRequestHeadersKB != nil, "MaxRequestHeadersKB (meshlet's is inbound.limits.max_header_bytes)")
		if u := e.UpstreamConfig; u != nil {
			for _, c := range append([]*api.UpstreamConfig{u.Defaults}, u.Overrides...) {
				if c == nil {
					continue
				}
				add(c.EnvoyListenerJSON != "" || c.EnvoyClusterJSON != "", "UpstreamConfig Envoy JSON")
				add(c.MeshGateway.Mode != "", "UpstreamConfig.MeshGateway")
				add(c.BalanceOutboundConnections != "", "UpstreamConfig.BalanceOutboundConnections")
				add(c.Peer != "", "UpstreamConfig for a cluster peer")
			}
		}
	case *api.ProxyConfigEntry:
		for k := range e.Config {
			add(k != "protocol", "Config."+k)
		}
		add(e.Mode != "", "Mode")
		add(e.TransparentProxy != nil, "TransparentProxy")
		add(e.MutualTLSMode != "", "MutualTLSMode")
		add(e.MeshGateway.Mode != "", "MeshGateway")
		add(len(e.Expose.Paths) > 0 || e.Expose.Checks, "Expose")
		add(e.AccessLogs != nil, "AccessLogs (meshlet's is log.access_log)")
		add(len(e.EnvoyExtensions) > 0, "EnvoyExtensions")
		add(e.FailoverPolicy != nil, "FailoverPolicy")
		add(e.PrioritizeByLocality != nil, "PrioritizeByLocality")
	case *api.MeshConfigEntry:
		add(e.AllowEnablingPermissiveMutualTLS, "AllowEnablingPermissiveMutualTLS")
		add(e.ValidateClusters, "ValidateClusters")
		add(e.HTTP != nil, "HTTP (meshlet always replaces X-Forwarded-Client-Cert)")
		add(e.Peering != nil, "Peering")
	}
	slices.Sort(out)
	return out
}

// warnIgnored logs, once per version of an entry, the fields of it meshlet does not apply.
func (e *ConfigEntries) warnIgnored(en api.ConfigEntry) {
	fields := ignoredFields(en)
	if len(fields) == 0 {
		return
	}
	key := en.GetKind() + "/" + en.GetName()
	if e.warned[key] == en.GetModifyIndex() {
		return
	}
	e.warned[key] = en.GetModifyIndex()
	e.c.log.Warn("consul config entry: fields meshlet does not apply", "kind", en.GetKind(), "name", en.GetName(),
		"ignored", strings.Join(fields, ", "))
}

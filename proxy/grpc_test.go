package proxy

import (
	"net/http"
	"net/url"
	"testing"
	"time"

	"meshlet.dev/meshlet/resilience"
)

func TestParseGRPCTimeout(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1S", time.Second, true},
		{"200m", 200 * time.Millisecond, true},
		{"5u", 5 * time.Microsecond, true},
		{"7n", 7, true},
		{"2M", 2 * time.Minute, true},
		{"1H", time.Hour, true},
		{"99999999S", 99999999 * time.Second, true},
		{"999999999S", 0, false}, // more than 8 digits
		{"", 0, false},
		{"S", 0, false},
		{"10", 0, false},
		{"10x", 0, false},
		{"-1S", 0, false},
		{"1.5S", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseGRPCTimeout(tt.in)
		if ok != tt.ok || got != tt.want {
			t.Errorf("parseGRPCTimeout(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestEncodeGRPCMessage(t *testing.T) {
	tests := map[string]string{
		"plain message":   "plain message",
		"100% sure":       "100%25 sure",
		"ünïcode":         "%C3%BCn%C3%AFcode",
		"line\nbreak":     "line%0Abreak",
		"":                "",
		"tab\tand ~tilde": "tab%09and ~tilde",
	}
	for in, want := range tests {
		got := encodeGRPCMessage(in)
		if got != want {
			t.Errorf("encodeGRPCMessage(%q) = %q, want %q", in, got, want)
		}
		// The gRPC spec's encoding is percent-encoding of those bytes: decoding must give the input back.
		dec, err := url.PathUnescape(got)
		if err != nil || dec != in {
			t.Errorf("decoding %q gave %q, %v", got, dec, err)
		}
	}
}

func TestIsGRPC(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/grpc":               true,
		"application/grpc+proto":         true,
		"application/grpc;charset=utf-8": true,
		"application/grpc-web":           false,
		"application/grpc-web+proto":     false,
		"application/json":               false,
		"":                               false,
	} {
		r := &http.Request{Header: http.Header{"Content-Type": {ct}}}
		if got := isGRPC(r); got != want {
			t.Errorf("isGRPC(%q) = %v, want %v", ct, got, want)
		}
	}
}

func TestParseGRPCStatus(t *testing.T) {
	for in, want := range map[string]int{"0": 0, "14": 14, "16": 16, "17": 2, "-1": 2, "": 2, "x": 2} {
		if got := int(resilience.ParseGRPCStatus(in)); got != want {
			t.Errorf("ParseGRPCStatus(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestRouteLookup(t *testing.T) {
	api, tcp := &upstream{name: "api", protocol: ProtocolHTTP}, &upstream{name: "db", protocol: ProtocolTCP}
	rt := newRouteTable(map[string]*upstreamEntry{"api": {u: api}, "db": {u: tcp}}, []string{"mesh", "svc.cluster.local"})
	for host, want := range map[string]*upstream{
		"api": api, "API": api, "api:80": api, "api.mesh": api, "api.mesh.": api, "api.mesh:8080": api,
		"api.svc.cluster.local": api, "db": nil, "db.mesh": nil, "other": nil, "api.other": nil, "": nil,
		"127.0.0.1:15001": nil, "[::1]:80": nil, "mesh": nil,
	} {
		if got := rt.lookup(host); got != want {
			t.Errorf("lookup(%q) = %v, want %v", host, got, want)
		}
	}
}

package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// FuzzConfig feeds arbitrary bytes through the path of `meshlet run -config`: strict decoding, defaults and
// validation. Nothing may panic; every problem must come back as an error value.
func FuzzConfig(f *testing.F) {
	for _, s := range []string{
		"service: {name: web}\n",
		"service: {name: web}\nfrobnicate: 1\n",
		"service: {name: web, prot: http}\n",
		"service: {name: web}\nshutdown: {drain_delay: soon}\n",
		"service: {name: web}\nshutdown: {drain_delay: -1s, drain_timeout: -5s}\n",
		"service: [\n",
		"",
		"service: {name: web}\n---\nservice: {name: api}\n",
		"service: {name: web}\nupstreams:\n  - {name: api, listen: 127.0.0.1:9001, timeout: 250ms}\n",
		"service: {name: web}\nupstreams:\n  - {name: api, listen: 127.0.0.1:9001, retry: {max_attempts: 0, retry_on: [\"503\", unavailable, bogus]}}\n",
		"service: {name: web}\ndiscovery: {consul: {address: 127.0.0.1:8500, token: secret}}\n",
		"service: {name: web}\nlog: {level: loud}\nadmin: {listen: \"[::1]:x\"}\n",
		"~\n",
		"[]\n",
		"service: &a {name: *a}\n",
		"service: {name: \"\\0\"}\nupstreams: [~, {}]\n",
	} {
		f.Add([]byte(s))
	}
	for _, glob := range []string{"../../examples/demo/*.yaml", "../../examples/demo/consul/*.yaml"} {
		files, _ := filepath.Glob(glob)
		for _, name := range files {
			if data, err := os.ReadFile(name); err == nil {
				f.Add(data)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := decodeConfig(data)
		if err != nil {
			if cfg != nil {
				t.Fatalf("decodeConfig returned a config and the error %v", err)
			}
			return
		}
		if cfg == nil {
			t.Fatal("decodeConfig returned neither a config nor an error")
		}
		cfg.explicit = slices.Clone(cfg.Upstreams)
		cfg.setDefaults()
		_ = cfg.validate() // any outcome but a panic is fine
	})
}

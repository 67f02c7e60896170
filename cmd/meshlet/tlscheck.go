package main

import (
	"errors"
	"fmt"
	"io/fs"

	"meshlet.dev/meshlet/mtls"
)

// checkTLSFiles is what `meshlet check` finds in the certificate files of the tls section (source files), beyond
// the config itself (validateTLS, shared with run and reload, reads no file: the files change at runtime, and a
// running meshlet logs the same findings at each load). Files that do not make a bundle are an error: run would
// fail on them the same way (for instance a ca_file with no root of the leaf's trust domain). Roots the bundle
// leaves unused are warnings, not errors: a root of another trust domain vouches only for that trust domain,
// whose peers meshlet refuses anyway (no federation), so a shared multi-domain CA file works and is safe; a
// root that names no trust domain beside roots that do vouches for nothing. Files that cannot be read here (a
// Kubernetes secret mounted only in the pod) are a warning that says they were not checked. Without a tls
// section, or with source consul, there is nothing to read.
func (c *fileConfig) checkTLSFiles() (warnings []string, err error) {
	if c.TLS.Source != mtls.SourceFiles {
		return nil, nil
	}
	b, err := mtls.LoadFiles(c.TLS)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return []string{fmt.Sprintf("tls: the certificate files were not checked: %v", err)}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	for _, w := range b.Warnings {
		warnings = append(warnings, "tls.ca_file: "+w)
	}
	return warnings, nil
}

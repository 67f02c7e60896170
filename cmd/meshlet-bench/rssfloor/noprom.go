//go:build !prom

package main

import "net/http"

// addMetrics adds nothing: the plain reference links no metrics library.
func addMetrics(*http.ServeMux) {}

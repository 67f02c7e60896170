// Command rssfloor is the reference of meshlet-bench -scale's idle RSS figure: the smallest Go program that does
// what an idle meshlet does for the figure (an HTTP server listening, answering GET /ready), built with meshlet's
// own flags. Built as is, it links net/http (and with it crypto/tls), as every Go proxy does; built with -tags
// prom, it also serves client_golang's /metrics from a registry with the Go and process collectors, as meshlet's
// admin listener does. The difference between the two, and between them and meshlet, is what each part costs in
// an idle process: most of it pages of the binary that package initialization touches.
//
//	rssfloor -listen 127.0.0.1:9999
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "the address to listen on")
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rssfloor:", err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ready\n")) })
	addMetrics(mux)
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	srv.Close()
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// fakeGreeter answers demo.Greeter/SayHello with "hello, NAME", or err.
type fakeGreeter struct{ err error }

func (f fakeGreeter) Invoke(_ context.Context, method string, in, out any, _ ...grpc.CallOption) error {
	if f.err != nil {
		return f.err
	}
	if method != "/demo.Greeter/SayHello" {
		return status.Error(codes.Unimplemented, method)
	}
	out.(*wrapperspb.StringValue).Value = "hello, " + in.(*wrapperspb.StringValue).GetValue()
	return nil
}

func (fakeGreeter) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, errors.New("no streams")
}

func TestHandler(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("item") == "broken" {
			http.Error(w, "no", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(`{"item":"` + r.URL.Query().Get("item") + `"}`))
	}))
	defer api.Close()

	tests := []struct {
		name, query string
		grpcErr     error
		code        int
		greeting    string // on 200
		item        string // on 200
		call        string // on 502
	}{
		{name: "defaults", code: 200, greeting: "hello, world", item: "coffee"},
		{name: "query", query: "?name=ann&item=tea", code: 200, greeting: "hello, ann", item: "tea"},
		{name: "grpc fails", grpcErr: status.Error(codes.Unavailable, "down"), code: 502, call: "grpc"},
		{name: "http fails", query: "?item=broken", code: 502, call: "http"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &handler{greeter: fakeGreeter{tt.grpcErr}, priceURL: api.URL + "/price", client: api.Client(),
				timeout: time.Second, log: slog.New(slog.DiscardHandler)}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/"+tt.query, nil))
			if rec.Code != tt.code {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.code, rec.Body)
			}
			var got struct {
				Greeting, Call string
				Price          struct{ Item string }
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if got.Greeting != tt.greeting || got.Price.Item != tt.item || got.Call != tt.call {
				t.Errorf("got %+v, want greeting %q item %q call %q", got, tt.greeting, tt.item, tt.call)
			}
		})
	}
}

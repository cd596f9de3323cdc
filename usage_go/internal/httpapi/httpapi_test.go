package httpapi_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"constellation/usage_go/internal/httpapi"
	"constellation/usage_go/internal/store"
	"constellation/usage_go/internal/testdb"
)

type okPinger struct{}

func (okPinger) Ping(context.Context) error { return nil }

func serve(t *testing.T) (*httptest.Server, string) {
	t.Helper()
	tx := testdb.Tx(t)
	id := testdb.Account(t, tx, "carol")
	testdb.JobWithRun(t, tx, id, 60, 10, 4)
	s := &httpapi.Server{Store: store.New(tx), DB: okPinger{}, Now: time.Now, Logger: slog.Default()}
	srv := httptest.NewServer(s.Router())
	t.Cleanup(srv.Close)
	return srv, id
}

func get(t *testing.T, url string) (*http.Response, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp, body
}

func TestAccountUsageOverHTTP(t *testing.T) {
	t.Parallel()
	srv, id := serve(t)
	resp, body := get(t, srv.URL+"/usage/accounts/"+id+"?window=week")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %v", resp.StatusCode, body)
	}
	if body["tiles"] != float64(4) || body["jobs"] != float64(1) || body["window"] != "week" {
		t.Fatalf("body = %v", body)
	}
}

func TestErrorsAreProblemDocuments(t *testing.T) {
	t.Parallel()
	srv, id := serve(t)
	cases := []struct {
		path   string
		status int
	}{
		{"/usage/accounts/not-a-uuid", http.StatusUnprocessableEntity},
		{"/usage/accounts/00000000-0000-0000-0000-000000000000", http.StatusNotFound},
		{"/usage/accounts/" + id + "?window=decade", http.StatusUnprocessableEntity},
		{"/usage/leaderboard?metric=watts", http.StatusUnprocessableEntity},
		{"/usage/leaderboard?limit=0", http.StatusUnprocessableEntity},
		{"/nope", http.StatusNotFound},
	}
	for _, c := range cases {
		resp, body := get(t, srv.URL+c.path)
		if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: status %d (%s), want %d problem+json", c.path, resp.StatusCode, resp.Header.Get("Content-Type"), c.status)
		}
		if body["detail"] == "" || body["status"] != float64(c.status) {
			t.Errorf("%s: body %v", c.path, body)
		}
	}
}

func TestLeaderboardOverHTTP(t *testing.T) {
	t.Parallel()
	srv, _ := serve(t)
	resp, body := get(t, srv.URL+"/usage/leaderboard?metric=tiles&window=all&limit=5")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %v", resp.StatusCode, body)
	}
	data := body["data"].([]any)
	if len(data) == 0 || data[0].(map[string]any)["account_name"] != "carol" {
		t.Fatalf("data = %v", data)
	}
}

func TestRequestsAreTracedInTheCallersTrace(t *testing.T) {
	recorder := tracetest.NewSpanRecorder()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder)))
	otel.SetTextMapPropagator(propagation.TraceContext{})
	srv, id := serve(t)
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/usage/accounts/"+id, nil)
	req.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	spans := recorder.Ended()
	if len(spans) == 0 {
		t.Fatal("no span recorded for the request")
	}
	span := spans[len(spans)-1]
	if got := span.SpanContext().TraceID().String(); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("span in trace %s, want the caller's", got)
	}
	// One name per route, whatever the account: the pattern, not the path.
	if span.Name() != "GET /usage/accounts/{account_id}" {
		t.Fatalf("span name %q", span.Name())
	}
}

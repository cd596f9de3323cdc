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

// keys of the test's accounts: carol (a member with usage), erin (a member with more), and an admin.
type keys struct{ carol, erin, admin string }

func serve(t *testing.T) (*httptest.Server, string, keys) {
	t.Helper()
	tx := testdb.Tx(t)
	id := testdb.Account(t, tx, "carol")
	testdb.JobWithRun(t, tx, id, 60, 10, 4)
	erin := testdb.Account(t, tx, "erin")
	testdb.JobWithRun(t, tx, erin, 600, 100, 40)
	admin := testdb.AccountWithRole(t, tx, "ops", "admin")
	s := &httpapi.Server{Store: store.New(tx), DB: okPinger{}, Now: time.Now, Logger: slog.Default()}
	srv := httptest.NewServer(s.Router())
	t.Cleanup(srv.Close)
	return srv, id, keys{testdb.Key(t, tx, id), testdb.Key(t, tx, erin), testdb.Key(t, tx, admin)}
}

func get(t *testing.T, url, key string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
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
	srv, id, k := serve(t)
	resp, body := get(t, srv.URL+"/usage/accounts/"+id+"?window=week", k.carol)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %v", resp.StatusCode, body)
	}
	if body["tiles"] != float64(4) || body["jobs"] != float64(1) || body["window"] != "week" {
		t.Fatalf("body = %v", body)
	}
}

func TestErrorsAreProblemDocuments(t *testing.T) {
	t.Parallel()
	srv, id, k := serve(t)
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
		resp, body := get(t, srv.URL+c.path, k.admin)
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
	srv, _, k := serve(t)
	resp, body := get(t, srv.URL+"/usage/leaderboard?metric=tiles&window=all&limit=100", k.admin)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %v", resp.StatusCode, body)
	}
	names := map[string]float64{}
	for _, row := range body["data"].([]any) {
		names[row.(map[string]any)["account_name"].(string)] = row.(map[string]any)["rank"].(float64)
	}
	if names["erin"] >= names["carol"] || names["carol"] == 0 {
		t.Fatalf("an admin sees every account ranked: %v", names)
	}
}

func TestAMemberSeesOnlyTheirOwnUsageAndRank(t *testing.T) {
	t.Parallel()
	srv, id, k := serve(t)
	resp, body := get(t, srv.URL+"/usage/leaderboard?metric=tiles&window=all", k.carol)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %v", resp.StatusCode, body)
	}
	data := body["data"].([]any)
	if len(data) != 1 || data[0].(map[string]any)["account_name"] != "carol" || data[0].(map[string]any)["rank"].(float64) < 2 {
		t.Fatalf("a member's board is their own row, ranked below erin: %v", data)
	}
	if resp, _ := get(t, srv.URL+"/usage/accounts/"+id, k.erin); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("another member's usage: status %d, want 404", resp.StatusCode)
	}
	if resp, _ := get(t, srv.URL+"/usage/accounts/"+id, k.admin); resp.StatusCode != http.StatusOK {
		t.Fatalf("an admin reads any account: status %d", resp.StatusCode)
	}
}

func TestNoKeyNoUsage(t *testing.T) {
	t.Parallel()
	srv, id, _ := serve(t)
	for _, key := range []string{"", "cst_not-a-key"} {
		resp, body := get(t, srv.URL+"/usage/accounts/"+id, key)
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Fatalf("key %q: status %d %v, want a 401 problem", key, resp.StatusCode, body)
		}
	}
	if resp, _ := get(t, srv.URL+"/healthz", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz needs no key: %d", resp.StatusCode)
	}
}

func TestRequestsAreTracedInTheCallersTrace(t *testing.T) {
	recorder := tracetest.NewSpanRecorder()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder)))
	otel.SetTextMapPropagator(propagation.TraceContext{})
	srv, id, k := serve(t)
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/usage/accounts/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+k.carol)
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

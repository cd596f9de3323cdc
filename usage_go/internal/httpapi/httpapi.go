// Package httpapi serves usage over HTTP (chi), with problem+json errors and Prometheus metrics.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	openapi_types "github.com/oapi-codegen/runtime/types"

	"constellation/usage_go/internal/api"
	"constellation/usage_go/internal/store"
)

// Pinger is the part of the pool readiness needs.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Server holds what the handlers need.
type Server struct {
	Store  *store.Store
	DB     Pinger
	Now    func() time.Time
	Logger *slog.Logger
}

var requests = prometheus.NewCounterVec(
	prometheus.CounterOpts{Name: "constellation_usage_requests_total", Help: "Usage API requests"},
	[]string{"route", "status"},
)

func init() { prometheus.MustRegister(requests) }

// Router wires the routes; every request gets an OpenTelemetry server span named after its route
// pattern ("GET /usage/accounts/{account_id}", never the raw path: one name per route), continuing
// the caller's trace (traceparent) when there is one.
func (s *Server) Router() http.Handler {
	r := chi.NewRouter()
	r.Use(func(next http.Handler) http.Handler {
		// The route is known only once chi has matched it: s.routed renames the span then.
		return otelhttp.NewHandler(next, "usage", otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			return r.Method
		}))
	})
	r.Use(middleware.RequestID, middleware.Recoverer, s.routed)
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	r.Get("/readyz", s.ready)
	r.Handle("/metrics", promhttp.Handler())
	// The usage routes, their parameters and bodies come from openapi/spec.yaml (internal/api).
	api.HandlerWithOptions(s, api.ChiServerOptions{
		BaseRouter: r,
		ErrorHandlerFunc: func(w http.ResponseWriter, r *http.Request, err error) {
			writeError(w, r, http.StatusUnprocessableEntity, err.Error())
		},
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, http.StatusNotFound, "no such route")
	})
	return r
}

// routed labels what a request did by its route pattern: the request counter, and the span's name
// and http.route attribute.
func (s *Server) routed(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := chi.RouteContext(r.Context()).RoutePattern()
		requests.WithLabelValues(route, strconv.Itoa(ww.Status())).Inc()
		if route != "" {
			span := trace.SpanFromContext(r.Context())
			span.SetName(r.Method + " " + route)
			span.SetAttributes(attribute.String("http.route", route))
		}
	})
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.DB.Ping(ctx); err != nil {
		writeError(w, r, http.StatusServiceUnavailable, "postgres unreachable")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "checks": map[string]string{"postgres": "ok"}})
}

// UsageAccount serves GET /usage/accounts/{account_id} (api.ServerInterface, from the contract).
func (s *Server) UsageAccount(w http.ResponseWriter, r *http.Request, accountID openapi_types.UUID, params api.UsageAccountParams) {
	window := store.All
	if params.Window != nil {
		window = store.Window(*params.Window)
	}
	u, err := s.Store.Account(r.Context(), accountID.String(), window, s.Now())
	s.respond(w, r, toAPI(u), err)
}

// UsageLeaderboard serves GET /usage/leaderboard.
func (s *Server) UsageLeaderboard(w http.ResponseWriter, r *http.Request, params api.UsageLeaderboardParams) {
	window, metricName, limit := store.All, "gpu_seconds", 10
	if params.Window != nil {
		window = store.Window(*params.Window)
	}
	if params.Metric != nil {
		metricName = string(*params.Metric)
	}
	metric, err := store.ParseMetric(metricName)
	if err != nil {
		writeError(w, r, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if params.Limit != nil {
		if limit = *params.Limit; limit < 1 || limit > 100 {
			writeError(w, r, http.StatusUnprocessableEntity, "limit must be an integer from 1 to 100")
			return
		}
	}
	board, err := s.Store.Leaderboard(r.Context(), window, metric, limit, s.Now())
	data := make([]api.Usage, 0, len(board))
	for _, u := range board {
		data = append(data, toAPI(u))
	}
	s.respond(w, r, api.Leaderboard{Data: data, Metric: api.LeaderboardMetric(metric), Window: api.LeaderboardWindow(window)}, err)
}

func toAPI(u store.Usage) api.Usage {
	id, _ := uuid.Parse(u.AccountID)
	return api.Usage{
		AccountId: id, AccountName: u.AccountName, Window: api.UsageWindow(u.Window),
		Jobs: int(u.Jobs), Tiles: int(u.Tiles), GpuSeconds: u.GPUSeconds, EnergyJoules: u.EnergyJoules,
	}
}

func (s *Server) respond(w http.ResponseWriter, r *http.Request, body any, err error) {
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, body)
	case errors.Is(err, store.ErrNotFound):
		writeError(w, r, http.StatusNotFound, "no such account")
	case errors.Is(err, store.ErrInvalid):
		writeError(w, r, http.StatusUnprocessableEntity, err.Error())
	default:
		s.Logger.Error("usage query failed", "err", err, "path", r.URL.Path)
		writeError(w, r, http.StatusInternalServerError, "internal error")
	}
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// writeError answers with an RFC 9457 problem document.
func writeError(w http.ResponseWriter, r *http.Request, status int, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"type": "about:blank", "title": http.StatusText(status), "status": status, "detail": detail,
		"instance": r.URL.Path,
	})
}

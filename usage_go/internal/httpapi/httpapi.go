// Package httpapi serves usage over HTTP (chi), with problem+json errors and Prometheus metrics.
package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
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
		BaseRouter:  r,
		Middlewares: []api.MiddlewareFunc{s.authenticated},
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

type callerKey struct{}

// authenticated admits requests that carry a live API key (Authorization: Bearer, or X-API-Key): the
// API forwards its caller's key, and anyone else on the host needs one too. The caller's account and
// role go into the request's context; the handlers apply the API's rule (members: their own usage).
func (s *Server) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := strings.TrimSpace(r.Header.Get("X-API-Key"))
		if scheme, credentials, ok := strings.Cut(r.Header.Get("Authorization"), " "); key == "" && ok &&
			strings.EqualFold(scheme, "bearer") {
			key = strings.TrimSpace(credentials)
		}
		if key == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="constellation"`)
			writeError(w, r, http.StatusUnauthorized, "an API key is required (Authorization: Bearer <key> or X-API-Key)")
			return
		}
		sum := sha256.Sum256([]byte(key))
		caller, err := s.Store.CallerByKeyHash(r.Context(), hex.EncodeToString(sum[:]))
		switch {
		case errors.Is(err, store.ErrNotFound):
			w.Header().Set("WWW-Authenticate", `Bearer realm="constellation"`)
			writeError(w, r, http.StatusUnauthorized, "the API key is not valid (unknown, revoked, or its account is disabled)")
			return
		case err != nil:
			s.Logger.Error("key lookup failed", "err", err)
			writeError(w, r, http.StatusServiceUnavailable, "cannot check the key now; try again shortly")
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, caller)))
	})
}

func callerOf(r *http.Request) store.Caller {
	caller, _ := r.Context().Value(callerKey{}).(store.Caller)
	return caller
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
	if caller := callerOf(r); !caller.Admin && caller.AccountID != accountID.String() {
		writeError(w, r, http.StatusNotFound, "no such account") // another tenant's: as if absent
		return
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
	if caller := callerOf(r); !caller.Admin {
		// A member sees their own row and rank, never other tenants' names or usage.
		own, rank, err := s.Store.OwnRank(r.Context(), caller.AccountID, window, metric, s.Now())
		row := toAPI(own)
		if rank > 0 {
			row.Rank = &rank
		}
		s.respond(w, r, api.Leaderboard{Data: []api.Usage{row}, Metric: api.LeaderboardMetric(metric),
			Window: api.LeaderboardWindow(window)}, err)
		return
	}
	board, err := s.Store.Leaderboard(r.Context(), window, metric, limit, s.Now())
	data := make([]api.Usage, 0, len(board))
	for i, u := range board {
		row, rank := toAPI(u), i+1
		row.Rank = &rank
		data = append(data, row)
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

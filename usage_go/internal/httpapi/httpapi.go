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

	"constellation/usage_go/internal/store"
)

// Pinger is the part of the pool readiness needs.
type Pinger interface{ Ping(ctx context.Context) error }

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

// Router wires the routes.
func (s *Server) Router() http.Handler {
	r := chi.NewRouter()
	r.Use(middleware.RequestID, middleware.Recoverer, s.count)
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, map[string]string{"status": "ok"}) })
	r.Get("/readyz", s.ready)
	r.Handle("/metrics", promhttp.Handler())
	r.Get("/usage/accounts/{id}", s.account)
	r.Get("/usage/leaderboard", s.leaderboard)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, http.StatusNotFound, "no such route")
	})
	return r
}

func (s *Server) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := chi.RouteContext(r.Context()).RoutePattern()
		requests.WithLabelValues(route, strconv.Itoa(ww.Status())).Inc()
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

func window(r *http.Request) store.Window {
	if w := r.URL.Query().Get("window"); w != "" {
		return store.Window(w)
	}
	return store.All
}

func (s *Server) account(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	if _, err := uuid.Parse(id); err != nil {
		writeError(w, r, http.StatusUnprocessableEntity, "account id must be a UUID")
		return
	}
	u, err := s.Store.Account(r.Context(), id, window(r), s.Now())
	s.respond(w, r, u, err)
}

func (s *Server) leaderboard(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	metricName := q.Get("metric")
	if metricName == "" {
		metricName = "gpu_seconds"
	}
	metric, err := store.ParseMetric(metricName)
	if err != nil {
		writeError(w, r, http.StatusUnprocessableEntity, err.Error())
		return
	}
	limit := 10
	if l := q.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 1 || limit > 100 {
			writeError(w, r, http.StatusUnprocessableEntity, "limit must be an integer from 1 to 100")
			return
		}
	}
	board, err := s.Store.Leaderboard(r.Context(), window(r), metric, limit, s.Now())
	s.respond(w, r, map[string]any{"data": board, "metric": metric, "window": window(r)}, err)
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

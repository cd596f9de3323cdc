// Package store aggregates usage from the system of record.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Querier is satisfied by *pgxpool.Pool and pgx.Tx, so tests can run inside a rolled-back transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var (
	// ErrNotFound is returned when the account does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalid wraps errors in what the caller asked for (a bad window or metric).
	ErrInvalid = errors.New("invalid request")
)

// Window is a look-back period.
type Window string

const (
	Day   Window = "day"
	Week  Window = "week"
	Month Window = "month"
	All   Window = "all"
)

// Since returns the start of the window ending at now (zero time for All).
func (w Window) Since(now time.Time) (time.Time, error) {
	switch w {
	case Day:
		return now.Add(-24 * time.Hour), nil
	case Week:
		return now.Add(-7 * 24 * time.Hour), nil
	case Month:
		return now.AddDate(0, -1, 0), nil
	case All:
		return time.Time{}, nil
	}
	return time.Time{}, fmt.Errorf("%w: unknown window %q (want day, week, month or all)", ErrInvalid, string(w))
}

// Metric is what the leaderboard ranks by.
type Metric string

// metricOrdinals maps each metric to its column position in usageSQL's select list.
var metricOrdinals = map[Metric]int{
	"jobs":        3,
	"tiles":       4,
	"gpu_seconds": 5,
	"energy":      6,
}

// ParseMetric validates a metric name.
func ParseMetric(s string) (Metric, error) {
	if _, ok := metricOrdinals[Metric(s)]; !ok {
		return "", fmt.Errorf("%w: unknown metric %q (want gpu_seconds, tiles, jobs or energy)", ErrInvalid, s)
	}
	return Metric(s), nil
}

// Usage is one account's totals over a window.
type Usage struct {
	AccountID    string  `json:"account_id"`
	AccountName  string  `json:"account_name"`
	Window       Window  `json:"window"`
	Jobs         int64   `json:"jobs"`
	Tiles        int64   `json:"tiles"`
	GPUSeconds   float64 `json:"gpu_seconds"`
	EnergyJoules float64 `json:"energy_joules"`
}

// usageSQL totals jobs created in the window, tiles inferred and device time of their runs.
// GPU-seconds are the runs' own figure where recorded, else their wall time.
const usageSQL = `
WITH job_totals AS (
    SELECT j.account_id, count(*) AS jobs
    FROM jobs j WHERE j.created_at >= $1 GROUP BY j.account_id
), run_totals AS (
    SELECT j.account_id,
           sum(coalesce((r.metrics->>'gpu_seconds')::float8,
                        extract(epoch FROM r.finished_at - r.started_at))) AS gpu_seconds,
           sum(coalesce((r.metrics->>'energy_joules')::float8, 0)) AS energy_joules
    FROM runs r JOIN jobs j ON j.id = r.job_id
    WHERE r.finished_at IS NOT NULL AND r.started_at >= $1 GROUP BY j.account_id
), tile_totals AS (
    SELECT j.account_id, count(*) AS tiles
    FROM tile_results t JOIN jobs j ON j.id = t.job_id
    WHERE t.created_at >= $1 GROUP BY j.account_id
)
SELECT a.id::text, a.name,
       coalesce(jt.jobs, 0), coalesce(tt.tiles, 0),
       coalesce(rt.gpu_seconds, 0), coalesce(rt.energy_joules, 0)
FROM accounts a
LEFT JOIN job_totals jt ON jt.account_id = a.id
LEFT JOIN run_totals rt ON rt.account_id = a.id
LEFT JOIN tile_totals tt ON tt.account_id = a.id
`

// Store reads usage.
type Store struct{ db Querier }

// New wraps a pool or transaction.
func New(db Querier) *Store { return &Store{db: db} }

// Account returns one account's usage; ErrNotFound if there is no such account.
func (s *Store) Account(ctx context.Context, accountID string, window Window, now time.Time) (Usage, error) {
	since, err := window.Since(now)
	if err != nil {
		return Usage{}, err
	}
	u := Usage{Window: window}
	err = s.db.QueryRow(ctx, usageSQL+" WHERE a.id = $2::uuid", since, accountID).Scan(
		&u.AccountID, &u.AccountName, &u.Jobs, &u.Tiles, &u.GPUSeconds, &u.EnergyJoules)
	if errors.Is(err, pgx.ErrNoRows) {
		return Usage{}, ErrNotFound
	}
	return u, err
}

// Leaderboard returns the top accounts by metric.
func (s *Store) Leaderboard(ctx context.Context, window Window, metric Metric, limit int, now time.Time) ([]Usage, error) {
	since, err := window.Since(now)
	if err != nil {
		return nil, err
	}
	// The ordinal comes from a fixed map, never from the client.
	sql := usageSQL + fmt.Sprintf(" ORDER BY %d DESC, a.name LIMIT $2", metricOrdinals[metric])
	rows, err := s.db.Query(ctx, sql, since, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	board := []Usage{}
	for rows.Next() {
		u := Usage{Window: window}
		if err := rows.Scan(&u.AccountID, &u.AccountName, &u.Jobs, &u.Tiles, &u.GPUSeconds, &u.EnergyJoules); err != nil {
			return nil, err
		}
		board = append(board, u)
	}
	return board, rows.Err()
}

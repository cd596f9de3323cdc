// Package config reads the usage service's settings from the environment.
package config

import (
	"errors"
	"fmt"
	"os"
	"regexp"
)

// Config is what the service needs to start.
type Config struct {
	// DatabaseURL is a libpq URL for the `constellation` database.
	DatabaseURL string
	// Addr is the listen address, e.g. 127.0.0.1:8081.
	Addr string
}

// driverSuffix matches SQLAlchemy-style schemes such as postgresql+psycopg://, shared with the Python side.
var driverSuffix = regexp.MustCompile(`^(postgres(?:ql)?)\+[a-z0-9_]+://`)

// Load reads DATABASE_URL (required) and USAGE_ADDR or USAGE_PORT.
func Load() (Config, error) {
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		return Config{}, errors.New("DATABASE_URL is not set")
	}
	addr := os.Getenv("USAGE_ADDR")
	if addr == "" {
		port := os.Getenv("USAGE_PORT")
		if port == "" {
			port = "8081"
		}
		addr = fmt.Sprintf("127.0.0.1:%s", port)
	}
	return Config{DatabaseURL: NormalizeURL(url), Addr: addr}, nil
}

// NormalizeURL turns a SQLAlchemy URL (postgresql+psycopg://...) into a libpq one.
func NormalizeURL(url string) string {
	return driverSuffix.ReplaceAllString(url, "$1://")
}

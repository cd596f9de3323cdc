// Package api holds the types and server interface generated from openapi/spec.yaml.
package api

//go:generate go tool oapi-codegen -config oapi-codegen.yaml -o api.gen.go ../../../openapi/spec.yaml

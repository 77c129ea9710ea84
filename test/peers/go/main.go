// Command sdk-go-peer is a Databricks Go SDK user configured only by its
// environment, as the README tells Lambda users: it asks who it is and prints
// one JSON line, {"ok":true,"user_name":...} (exit 0) or
// {"ok":false,"error":...} (exit 1). The tests run it against the broker's
// /metadata route. go.mod and go.sum pin the SDK; build with
// `go build -o <dir>/sdk-go-peer .` in this directory.
package main

import (
	"context"
	"encoding/json"
	"os"

	"github.com/databricks/databricks-sdk-go"
	"github.com/databricks/databricks-sdk-go/service/iam"
)

func main() {
	out := json.NewEncoder(os.Stdout)
	fail := func(err error) {
		out.Encode(struct {
			OK    bool   `json:"ok"`
			Error string `json:"error"`
		}{false, err.Error()})
		os.Exit(1)
	}
	w, err := databricks.NewWorkspaceClient()
	if err != nil {
		fail(err)
	}
	me, err := w.CurrentUser.Me(context.Background(), iam.MeRequest{})
	if err != nil {
		fail(err)
	}
	out.Encode(struct {
		OK       bool   `json:"ok"`
		UserName string `json:"user_name"`
	}{true, me.UserName})
}

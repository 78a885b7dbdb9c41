// vcsim-lab: govmomi's vCenter simulator for the agent's conformance suite.
//
// Starts simulator.VPX() over TLS on 127.0.0.1:0, prints the SDK URL (with the
// simulator's credentials) on one stdout line, and serves until stdin closes.
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"

	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator"
)

func main() {
	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword("user", "pass")}
	model.Service.TLS = new(tls.Config)
	model.Service.RegisterEndpoints = true
	server := model.Service.NewServer()
	fmt.Println(server.URL.String())
	_, _ = io.Copy(io.Discard, os.Stdin)
	server.Close()
	model.Remove()
}

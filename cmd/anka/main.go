// Command anka is the CLI; everything lives in core/cli.
package main

import (
	"os"

	"github.com/anka-net/anka/core/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }

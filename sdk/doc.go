// Package sdk is everything a third party needs to ship an anka network
// type. It is its own Go module so a plugin never pulls in the core's
// dependencies. This first part holds the naming rules the core and every
// plugin must agree on; the plugin protocol joins it next.
package sdk

module github.com/anka-net/anka/sdk

go 1.26

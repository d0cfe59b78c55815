#!/bin/sh
# Per-call mode: the request body is stdin, stdout is the response.
who=$(cat)
[ -n "$who" ] || who=world
echo "Hello from sh, $who! ($Http_Method $Http_Path)"

"""Golden tests for the syntax-aware chunker (cia_assets.lib.indexing.chunking).

Every expected (kind, symbol, line_start, line_end) below was checked by hand against the
numbered snippet; a change in these values is a change in what users get cited.
"""

from __future__ import annotations

import random
import re

import pytest

from cia_assets.lib.core.records import ChunkDraft
from cia_assets.lib.indexing import chunking
from cia_assets.lib.indexing.chunking import (
    SUPPORTED_LANGUAGES,
    chunk_file,
    classify_file,
    decode_source,
    detect_language,
)
from cia_assets.lib.indexing.chunking.tree import cached_parser

Expected = list[tuple[str, str | None, int, int]]

PYTHON = '''\
"""Order service."""

from __future__ import annotations

import os

TIMEOUT = 30


# Comment about Order.
@dataclass
class Order(Base):
    """An order."""

    id: int
    total: float = 0.0

    @property
    def taxed(self) -> float:
        return self.total * 1.2

    @taxed.setter
    def taxed(self, value: float) -> None:
        self.total = value / 1.2

    async def save(self, db):
        await db.put(self)


def main() -> None:
    print(Order(1))


if __name__ == "__main__":
    main()
'''

JAVASCRIPT = """\
import fs from "fs";

const DEFAULT_PORT = 8080;

// Reads a file.
export async function read(path) {
  return fs.promises.readFile(path, "utf8");
}

export const double = (x) => x * 2;

class Server extends EventEmitter {
  constructor(port) {
    super();
    this.port = port;
  }

  // Starts listening.
  start() {
    this.emit("start");
  }

  handle = (req) => {
    return req.url;
  };
}

Server.prototype.stop = function () {
  this.emit("stop");
};

module.exports = { Server };
"""

TYPESCRIPT = """\
import { Injectable } from "@angular/core";

export interface User {
  id: number;
  name: string;
}

export type Id = string | number;

export enum Role {
  Admin,
  Guest,
}

@Injectable()
export class UserService {
  private users: User[] = [];

  constructor(private readonly http: Http) {}

  @Log()
  find(id: Id): User | undefined {
    return this.users.find((u) => u.id === id);
  }
}

export function isAdmin(role: Role): boolean {
  return role === Role.Admin;
}

namespace Utils {
  export const VERSION = "1";
}
"""

TSX = """\
import React, { useState } from "react";

type Props = { title: string };

/** Shows a title. */
export const Title: React.FC<Props> = ({ title }) => {
  const [n, setN] = useState(0);
  return <h1 onClick={() => setN(n + 1)}>{title}</h1>;
};

export default function App() {
  return <Title title="hi" />;
}
"""

JAVA = """\
package com.example;

import java.util.List;

/** A repository. */
@Repository
public class UserRepo extends Base implements Repo {
    private final List<String> users;

    public UserRepo(List<String> users) {
        this.users = users;
    }

    @Override
    public int count() {
        return users.size();
    }

    enum Mode { READ, WRITE }
}

interface Repo {
    int count();
}
"""

GO = """\
package main

import "fmt"

// Server handles requests.
type Server struct {
\tAddr string
}

type (
\tID   int
\tName string
)

// Start runs the server.
func (s *Server) Start(port int) error {
\tfmt.Println(s.Addr, port)
\treturn nil
}

func Map[T any](xs []T, f func(T) T) []T {
\treturn xs
}

var Version = "1.0"
"""

RUST = """\
use std::fmt;

/// A point.
#[derive(Debug, Clone)]
pub struct Point {
    x: i32,
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.x)
    }
}

impl Point {
    pub fn new(x: i32) -> Self {
        Point { x }
    }

    /// Doubles x.
    pub fn double(&self) -> i32 {
        self.x * 2
    }
}

pub trait Shape {
    fn area(&self) -> f64;
}

const MAX: i32 = 10;

#[cfg(test)]
mod tests {
    #[test]
    fn it_works() {}
}
"""

C = """\
#ifndef UTIL_H
#define UTIL_H
#include <stdio.h>

/* Adds two numbers. */
static int add(int a, int b) {
    return a + b;
}

struct point {
    int x;
    int y;
};

typedef struct {
    int w;
} size_t2;

char **split(const char *s);

int main(void) {
    printf("%d\\n", add(1, 2));
    return 0;
}
#endif /* UTIL_H */
"""

CPP = """\
#include <string>

namespace geo {

template <typename T>
class Shape : public Base {
 public:
  Shape() = default;
  virtual ~Shape() {}
  double area() const {
    return 0.0;
  }
 private:
  T data_;
};

double Shape<int>::perimeter() const {
  return 1.0;
}

}  // namespace geo

int main() { return 0; }
"""

CSHARP = """\
using System;

namespace App.Services
{
    /// <summary>Greets.</summary>
    [Serializable]
    public class Greeter : IGreeter
    {
        private readonly string _name;

        public Greeter(string name)
        {
            _name = name;
        }

        public string Greet() => $"Hi {_name}";
    }

    public interface IGreeter
    {
        string Greet();
    }
}
"""

RUBY = """\
require "json"

module Shop
  # An order.
  class Order < Base
    attr_reader :items

    def initialize(items)
      @items = items
    end

    def self.build(data)
      new(data)
    end

    class << self
      def empty
        new([])
      end
    end
  end

  module Helpers
    def fmt(x) = x.to_s
  end
end
"""

PHP = """\
<?php
namespace App\\Models;

use Illuminate\\Model;

/**
 * A user.
 */
class User extends Model
{
    protected $table = 'users';

    public function posts()
    {
        return $this->hasMany(Post::class);
    }
}

function helper($x)
{
    return $x;
}
"""

KOTLIN = """\
package app

import kotlin.math.max

/** A user. */
data class User(val name: String) {
    fun greet(): String {
        return "Hi $name"
    }

    companion object {
        fun guest() = User("guest")
    }
}

fun String.shout() = uppercase()

object Registry {
    val users = mutableListOf<User>()
}
"""

SCALA = """\
package app

import scala.util.Try

/** A shape. */
trait Shape {
  def area: Double
}

case class Circle(r: Double) extends Shape {
  def area: Double = math.Pi * r * r

  def scale(k: Double): Circle =
    copy(r = r * k)
}

object Circle {
  def unit: Circle = Circle(1)
}
"""

SWIFT = """\
import Foundation

/// A counter.
public class Counter {
    var count = 0

    init(start: Int) {
        count = start
    }

    func increment() -> Int {
        count += 1
        return count
    }
}

extension Counter: CustomStringConvertible {
    var description: String { "\\(count)" }
}

func makeCounter() -> Counter { Counter(start: 0) }
"""

BASH = """\
#!/usr/bin/env bash
set -euo pipefail

# Prints usage.
usage() {
  echo "usage: $0 <file>"
}

function main {
  usage
  exit 0
}

main "$@"
"""

LUA = """\
local M = {}

-- Adds numbers.
function M.add(a, b)
  return a + b
end

function M:reset()
  self.n = 0
end

local function helper(x)
  return x * 2
end

M.double = function(x) return helper(x) end

return M
"""

HASKELL = """\
module Main where

import Data.List (sort)

-- | Adds two ints.
add :: Int -> Int -> Int
add x y = x + y

fact :: Integer -> Integer
fact 0 = 1
fact n = n * fact (n - 1)

data Shape = Circle Double | Square Double

class Describable a where
  describe :: a -> String

instance Describable Shape where
  describe _ = "shape"

main :: IO ()
main = print (add 1 2)
"""

ELIXIR = '''\
defmodule Shop.Cart do
  @moduledoc "A cart."

  alias Shop.Item

  @doc """
  Adds an item.
  """
  @spec add(t(), Item.t()) :: t()
  def add(cart, item) do
    [item | cart]
  end

  def total([]), do: 0
  def total([h | t]), do: h.price + total(t)

  defp secret(x) when is_integer(x), do: x
end
'''

R = """\
library(dplyr)

# Scales a vector.
scale_vec <- function(x, k = 2) {
  x * k
}

summarise_df = function(df) {
  df %>% summarise(n = n())
}

threshold <- 0.5
"""

DART = """\
import 'package:flutter/material.dart';

/// A counter widget.
class Counter extends StatelessWidget {
  final int value;

  const Counter(this.value);

  @override
  Widget build(BuildContext context) {
    return Text('$value');
  }

  int get doubled => value * 2;
}

void main() {
  runApp(Counter(1));
}
"""

JULIA = '''\
module Geometry

export area

"""
    area(r)

Area of a circle.
"""
function area(r::Float64)::Float64
    return pi * r^2
end

perimeter(r) = 2pi * r

struct Circle
    r::Float64
end

end
'''

SOLIDITY = """\
// SPDX-License-Identifier: MIT
pragma solidity ^0.8.0;

/// @title A token.
contract Token is ERC20 {
    uint256 public total;

    modifier onlyOwner() {
        require(msg.sender == owner);
        _;
    }

    function mint(address to, uint256 amount) public onlyOwner {
        total += amount;
    }
}
"""

PROTO = """\
syntax = "proto3";

package shop;

// An order.
message Order {
  string id = 1;
  repeated Item items = 2;
}

service OrderService {
  rpc Get(GetRequest) returns (Order);
  rpc List(ListRequest) returns (stream Order);
}
"""

TERRAFORM = """\
terraform {
  required_version = ">= 1.0"
}

# The bucket.
resource "aws_s3_bucket" "logs" {
  bucket = "logs"
}

variable "region" {
  default = "us-east-1"
}
"""

PERL = """\
package Greeter;
use strict;
use warnings;

# Constructor.
sub new {
    my ($class, %args) = @_;
    return bless {%args}, $class;
}

sub greet {
    my $self = shift;
    print "Hi\\n";
}

1;
"""

YAML = """\
name: CI
on:
  push:
    branches: [main]
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: make
      - run: make test
  lint:
    runs-on: ubuntu-latest
    steps:
      - run: make lint
"""

JSON = """\
{
  "name": "demo",
  "scripts": {
    "build": "tsc",
    "test": "jest",
    "lint": "eslint ."
  },
  "dependencies": {
    "react": "^18.0.0",
    "react-dom": "^18.0.0",
    "zod": "^3.0.0"
  }
}
"""

MARKDOWN = """\
---
title: Demo
---
# Project

Intro text.

## Install

### From source

Run make.

```bash
# not a heading
make
```

Setext Title
============

Body.
"""

RST = """\
=====
Title
=====

Intro.

Install
-------

Run it.

Usage
-----

Call it.
"""

# (id, path, source, max_lines, language, expected chunks)
CASES: list[tuple[str, str, str, int, str, Expected]] = [
    (
        "python",
        "svc/orders.py",
        PYTHON,
        120,
        "python",
        [
            ("module", None, 1, 7),
            ("class", "Order", 10, 27),
            ("function", "main", 30, 31),
            ("module", None, 34, 35),
        ],
    ),
    (
        "python-split",
        "svc/orders.py",
        PYTHON,
        8,
        "python",
        [
            ("module", None, 1, 7),
            ("class", "Order", 10, 16),
            # property getter and setter share a name and are adjacent: one chunk
            ("method", "Order.taxed", 18, 24),
            ("method", "Order.save", 26, 27),
            ("function", "main", 30, 31),
            ("module", None, 34, 35),
        ],
    ),
    (
        "javascript",
        "src/server.js",
        JAVASCRIPT,
        120,
        "javascript",
        [
            ("module", None, 1, 3),
            ("function", "read", 5, 8),
            ("function", "double", 10, 10),
            ("class", "Server", 12, 26),
            ("function", "Server.prototype.stop", 28, 30),
            ("module", None, 32, 32),
        ],
    ),
    (
        "javascript-split",
        "src/server.js",
        JAVASCRIPT,
        6,
        "javascript",
        [
            ("module", None, 1, 3),
            ("function", "read", 5, 8),
            ("function", "double", 10, 10),
            ("class", "Server", 12, 12),
            ("method", "Server.constructor", 13, 16),
            ("method", "Server.start", 18, 21),
            ("method", "Server.handle", 23, 25),
            ("function", "Server.prototype.stop", 28, 30),
            ("module", None, 32, 32),
        ],
    ),
    (
        "typescript-split",
        "src/users.ts",
        TYPESCRIPT,
        6,
        "typescript",
        [
            ("module", None, 1, 1),
            ("class", "User", 3, 6),
            ("class", "Id", 8, 8),
            ("class", "Role", 10, 13),
            ("class", "UserService", 15, 17),
            ("method", "UserService.constructor", 19, 19),
            ("method", "UserService.find", 21, 24),
            ("function", "isAdmin", 27, 29),
            ("class", "Utils", 31, 33),
        ],
    ),
    (
        "tsx",
        "src/App.tsx",
        TSX,
        120,
        "tsx",
        [
            ("module", None, 1, 1),
            ("class", "Props", 3, 3),
            ("function", "Title", 5, 9),
            ("function", "App", 11, 13),
        ],
    ),
    (
        "java-split",
        "src/main/java/UserRepo.java",
        JAVA,
        5,
        "java",
        [
            ("module", None, 1, 3),
            ("class", "UserRepo", 5, 8),
            ("method", "UserRepo.UserRepo", 10, 12),
            ("method", "UserRepo.count", 14, 17),
            ("class", "UserRepo.Mode", 19, 19),
            ("class", "Repo", 22, 24),
        ],
    ),
    (
        "go",
        "cmd/server.go",
        GO,
        120,
        "go",
        [
            ("module", None, 1, 3),
            ("class", "Server", 5, 8),
            ("class", None, 10, 13),
            ("method", "Server.Start", 15, 19),
            ("function", "Map", 21, 23),
            ("module", None, 25, 25),
        ],
    ),
    (
        "rust",
        "src/point.rs",
        RUST,
        120,
        "rust",
        [
            ("module", None, 1, 1),
            ("class", "Point", 3, 7),
            ("class", "Point", 9, 13),
            ("class", "Point", 15, 24),
            ("class", "Shape", 26, 28),
            ("module", None, 30, 30),
            ("class", "tests", 32, 36),
        ],
    ),
    (
        "rust-split",
        "src/point.rs",
        RUST,
        6,
        "rust",
        [
            ("module", None, 1, 1),
            ("class", "Point", 3, 7),
            ("class", "Point", 9, 13),
            ("class", "Point", 15, 15),
            ("method", "Point.new", 16, 18),
            ("method", "Point.double", 20, 23),
            ("class", "Shape", 26, 28),
            ("module", None, 30, 30),
            ("class", "tests", 32, 36),
        ],
    ),
    (
        "c",
        "src/util.h",
        C,
        120,
        "c",
        [
            ("module", None, 1, 3),
            ("function", "add", 5, 8),
            ("class", "point", 10, 13),
            ("class", "size_t2", 15, 17),
            ("module", None, 19, 19),
            ("function", "main", 21, 24),
        ],
    ),
    (
        "cpp-split",
        "src/shape.cpp",
        CPP,
        5,
        "cpp",
        [
            ("module", None, 1, 3),
            ("class", "Shape", 5, 7),
            ("method", "Shape.Shape", 8, 8),
            ("method", "Shape.~Shape", 9, 9),
            ("method", "Shape.area", 10, 12),
            ("class", "Shape", 13, 15),
            ("function", "Shape.perimeter", 17, 19),
            ("function", "main", 23, 23),
        ],
    ),
    (
        "csharp-split",
        "Services/Greeter.cs",
        CSHARP,
        5,
        "csharp",
        [
            ("module", None, 1, 4),
            ("class", "Greeter", 5, 9),
            ("method", "Greeter.Greeter", 11, 14),
            ("method", "Greeter.Greet", 16, 16),
            ("class", "IGreeter", 19, 22),
        ],
    ),
    (
        "ruby-split",
        "lib/shop.rb",
        RUBY,
        6,
        "ruby",
        [
            ("module", None, 1, 3),
            ("class", "Shop.Order", 4, 6),
            ("method", "Shop.Order.initialize", 8, 10),
            ("method", "Shop.Order.build", 12, 14),
            ("class", "Shop.Order", 16, 16),
            ("method", "Shop.Order.empty", 17, 19),
            ("class", "Shop.Helpers", 23, 25),
        ],
    ),
    (
        "php-split",
        "app/Models/User.php",
        PHP,
        5,
        "php",
        [
            ("module", None, 1, 4),
            ("class", "User", 6, 10),
            ("class", "User", 11, 11),
            ("method", "User.posts", 13, 16),
            ("function", "helper", 19, 22),
        ],
    ),
    (
        "kotlin-split",
        "src/User.kt",
        KOTLIN,
        5,
        "kotlin",
        [
            ("module", None, 1, 3),
            ("class", "User", 5, 6),
            ("method", "User.greet", 7, 9),
            ("class", "User.Companion", 11, 13),
            ("function", "String.shout", 16, 16),
            ("class", "Registry", 18, 20),
        ],
    ),
    (
        "scala-split",
        "src/Shape.scala",
        SCALA,
        4,
        "scala",
        [
            ("module", None, 1, 3),
            ("class", "Shape", 5, 8),
            ("class", "Circle", 10, 10),
            ("method", "Circle.area", 11, 11),
            ("method", "Circle.scale", 13, 14),
            ("class", "Circle", 17, 19),
        ],
    ),
    (
        "swift-split",
        "Sources/Counter.swift",
        SWIFT,
        5,
        "swift",
        [
            ("module", None, 1, 1),
            ("class", "Counter", 3, 5),
            ("method", "Counter.init", 7, 9),
            ("method", "Counter.increment", 11, 14),
            ("class", "Counter", 17, 19),
            ("function", "makeCounter", 21, 21),
        ],
    ),
    (
        "bash",
        "scripts/run.sh",
        BASH,
        120,
        "bash",
        [
            ("module", None, 1, 2),
            ("function", "usage", 4, 7),
            ("function", "main", 9, 12),
            ("module", None, 14, 14),
        ],
    ),
    (
        "lua",
        "lua/m.lua",
        LUA,
        120,
        "lua",
        [
            ("module", None, 1, 1),
            ("function", "M.add", 3, 6),
            ("method", "M.reset", 8, 10),
            ("function", "helper", 12, 14),
            ("function", "M.double", 16, 16),
            ("module", None, 18, 18),
        ],
    ),
    (
        "haskell",
        "src/Main.hs",
        HASKELL,
        120,
        "haskell",
        [
            ("module", None, 1, 3),
            # signature + equations are one function; the haddock comment is attached
            ("function", "add", 5, 7),
            ("function", "fact", 9, 11),
            ("class", "Shape", 13, 13),
            ("class", "Describable", 15, 16),
            ("class", "Describable Shape", 18, 19),
            ("function", "main", 21, 22),
        ],
    ),
    (
        "elixir-split",
        "lib/cart.ex",
        ELIXIR,
        7,
        "elixir",
        [
            ("class", "Shop.Cart", 1, 4),
            ("function", "Shop.Cart.add", 6, 12),
            ("function", "Shop.Cart.total", 14, 15),
            ("function", "Shop.Cart.secret", 17, 17),
        ],
    ),
    (
        "r",
        "R/scale.R",
        R,
        120,
        "r",
        [
            ("module", None, 1, 1),
            ("function", "scale_vec", 3, 6),
            ("function", "summarise_df", 8, 10),
            ("module", None, 12, 12),
        ],
    ),
    (
        "dart-split",
        "lib/counter.dart",
        DART,
        5,
        "dart",
        [
            ("module", None, 1, 1),
            ("class", "Counter", 3, 5),
            ("method", "Counter.Counter", 7, 7),
            ("method", "Counter.build", 9, 12),
            ("method", "Counter.doubled", 14, 14),
            ("function", "main", 17, 19),
        ],
    ),
    (
        "julia",
        "src/Geometry.jl",
        JULIA,
        120,
        "julia",
        [
            ("module", None, 1, 3),
            ("function", "Geometry.area", 5, 12),
            ("function", "Geometry.perimeter", 14, 14),
            ("class", "Geometry.Circle", 16, 18),
        ],
    ),
    (
        "solidity-split",
        "contracts/Token.sol",
        SOLIDITY,
        5,
        "solidity",
        [
            ("module", None, 1, 2),
            ("class", "Token", 4, 6),
            ("method", "Token.onlyOwner", 8, 11),
            ("method", "Token.mint", 13, 15),
        ],
    ),
    (
        "proto-split",
        "proto/shop.proto",
        PROTO,
        3,
        "proto",
        [
            ("module", None, 1, 3),
            ("class", "Order", 5, 7),
            ("class", "Order", 8, 9),
            ("class", "OrderService", 11, 11),
            ("method", "OrderService.Get", 12, 12),
            ("method", "OrderService.List", 13, 13),
        ],
    ),
    (
        "terraform",
        "infra/main.tf",
        TERRAFORM,
        120,
        "hcl",
        [
            ("block", "terraform", 1, 3),
            ("block", "resource.aws_s3_bucket.logs", 5, 8),
            ("block", "variable.region", 10, 12),
        ],
    ),
    (
        "perl",
        "lib/Greeter.pm",
        PERL,
        120,
        "perl",
        [
            ("module", None, 1, 3),
            ("function", "new", 5, 9),
            ("function", "greet", 11, 14),
            ("module", None, 16, 16),
        ],
    ),
    (
        "yaml-structural",
        ".github/workflows/ci.yml",
        YAML,
        5,
        "yaml",
        [
            ("module", None, 1, 4),
            ("module", None, 5, 6),
            ("module", None, 7, 11),
            ("module", None, 12, 15),
        ],
    ),
    (
        "json-structural",
        "package.json",
        JSON,
        5,
        "json",
        [
            ("module", None, 1, 2),
            ("module", None, 3, 7),
            ("module", None, 8, 12),
        ],
    ),
    (
        "markdown",
        "docs/README.md",
        MARKDOWN,
        120,
        "markdown",
        [
            ("section", None, 1, 3),
            ("section", "Project", 4, 6),
            # "## Install" has no body of its own: merged into its first subsection
            ("section", "Project > Install > From source", 8, 17),
            ("section", "Setext Title", 19, 22),
        ],
    ),
    (
        "rst",
        "docs/index.rst",
        RST,
        120,
        "rst",
        [
            ("section", "Title", 1, 5),
            ("section", "Title > Install", 7, 10),
            ("section", "Title > Usage", 12, 15),
        ],
    ),
]

# Context (enclosing headers, not part of the cited text) of selected chunks: (case id, symbol,
# line_start) -> context.
CONTEXTS: dict[tuple[str, str | None, int], str] = {
    ("python-split", "Order", 10): "",
    ("python-split", "Order.taxed", 18): "class Order(Base):",
    ("javascript-split", "Server.start", 18): "class Server extends EventEmitter {",
    ("typescript-split", "UserService.find", 21): "export class UserService {",
    ("rust-split", "Point.double", 20): "impl Point {",
    ("cpp-split", "Shape.area", 10): "namespace geo {\nclass Shape : public Base {",
    ("csharp-split", "Greeter", 5): "namespace App.Services",
    ("csharp-split", "Greeter.Greet", 16): (
        "namespace App.Services\n    [Serializable]\n    public class Greeter : IGreeter"
    ),
    ("ruby-split", "Shop.Order.empty", 17): "module Shop\n  class Order < Base\n    class << self",
    ("php-split", "User", 11): "class User extends Model",
    ("elixir-split", "Shop.Cart.add", 6): "defmodule Shop.Cart do",
    ("julia", "Geometry.area", 5): "module Geometry",
    ("yaml-structural", None, 7): "jobs:\n  build:",
    ("yaml-structural", None, 12): "jobs:",
    ("json-structural", None, 3): "",
    ("markdown", "Project > Install > From source", 8): "# Project",
}

# Lines that may stay out of every chunk: closing brackets, `end`, `#endif`.
_UNCITED = re.compile(r"\s*(?:[(){}\[\];,]*|end|#endif\b.*|\}\s*//.*)\s*")


def _cited_lines(data: bytes) -> list[str]:
    return [line.removesuffix("\r") for line in decode_source(data).split("\n")]


def _check_invariants(data: bytes, drafts: list[ChunkDraft], *, windows: bool = False) -> None:
    """Exact text, valid ranges, no blank edges, no overlap (except windows), full coverage."""
    lines = _cited_lines(data)
    covered = [False] * len(lines)
    previous_end = 0
    for draft in drafts:
        assert 1 <= draft.line_start <= draft.line_end <= len(lines), draft
        assert draft.text == "\n".join(lines[draft.line_start - 1 : draft.line_end]), draft
        assert lines[draft.line_start - 1].strip() and lines[draft.line_end - 1].strip(), draft
        assert draft.kind in chunking.CHUNK_KINDS
        if not windows:
            assert draft.line_start > previous_end, f"overlap at {draft}"
            previous_end = draft.line_end
        for row in range(draft.line_start - 1, draft.line_end):
            covered[row] = True
    for number, (line, hit) in enumerate(zip(lines, covered, strict=True), start=1):
        if not hit:
            assert _UNCITED.fullmatch(line), f"line {number} not in any chunk: {line!r}"


@pytest.mark.parametrize(
    ("path", "source", "max_lines", "language", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_golden_chunks(path: str, source: str, max_lines: int, language: str, expected: Expected) -> None:
    drafts = chunk_file(path, source.encode(), max_lines=max_lines)
    assert [(d.kind, d.symbol, d.line_start, d.line_end) for d in drafts] == expected
    assert {d.language for d in drafts} == {language}
    _check_invariants(source.encode(), drafts)


@pytest.mark.parametrize(("key", "context"), list(CONTEXTS.items()), ids=lambda v: str(v))
def test_context(key: tuple[str, str | None, int], context: str) -> None:
    case_id, symbol, line_start = key
    case = next(c for c in CASES if c[0] == case_id)
    drafts = chunk_file(case[1], case[2].encode(), max_lines=case[3])
    draft = next(d for d in drafts if d.symbol == symbol and d.line_start == line_start)
    assert draft.context == context


def test_golden_cases_cover_every_supported_language() -> None:
    assert len(SUPPORTED_LANGUAGES) >= 20
    assert set(SUPPORTED_LANGUAGES) <= {case[4] for case in CASES}
    assert chunking.supported_languages() == SUPPORTED_LANGUAGES
    for language in SUPPORTED_LANGUAGES:
        assert cached_parser(language) is not None, language


def test_parsers_are_cached() -> None:
    assert cached_parser("python") is cached_parser("python")


def _big_class_source(methods: int, body: int, long_method_body: int = 0) -> str:
    lines = ["import os", "", "", "class Big(Base):", '    """Big class."""', "", "    LIMIT = 10", ""]
    for i in range(methods):
        lines.append(f"    def m{i}(self, x):")
        size = long_method_body if (long_method_body and i == methods - 1) else body
        lines.extend(f"        x = x + {j}" for j in range(size))
        lines.append("        return x")
        lines.append("")
    return "\n".join(lines) + "\n"


def test_large_class_is_split_into_header_and_methods() -> None:
    source = _big_class_source(methods=6, body=30)
    drafts = chunk_file("big.py", source.encode(), max_lines=120)
    # Method i spans 32 lines starting at 9 + 33 * i (def line, 30 statements, return).
    expected = [("module", None, 1, 1), ("class", "Big", 4, 7)] + [
        ("method", f"Big.m{i}", 9 + 33 * i, 40 + 33 * i) for i in range(6)
    ]
    assert [(d.kind, d.symbol, d.line_start, d.line_end) for d in drafts] == expected
    assert drafts[1].context == ""
    assert drafts[1].text.startswith("class Big(Base):\n")
    assert all(d.context == "class Big(Base):" for d in drafts[2:])
    _check_invariants(source.encode(), drafts)


def test_small_class_stays_one_chunk() -> None:
    source = _big_class_source(methods=2, body=3)
    drafts = chunk_file("small.py", source.encode(), max_lines=120)
    assert [(d.kind, d.symbol, d.line_start, d.line_end) for d in drafts] == [
        ("module", None, 1, 1),
        ("class", "Big", 4, 19),
    ]


def test_long_method_in_large_class_keeps_class_and_signature_context() -> None:
    source = _big_class_source(methods=3, body=10, long_method_body=200)
    drafts = chunk_file("big.py", source.encode(), max_lines=120)
    pieces = [d for d in drafts if d.symbol == "Big.m2"]
    # m2 starts at line 9 + 2 * 13 = 35 and has 202 lines: 35..236.
    assert [(d.line_start, d.line_end) for d in pieces] == [(35, 154), (155, 236)]
    assert pieces[0].context == "class Big(Base):"
    assert pieces[1].context == "class Big(Base):\n    def m2(self, x):"
    assert all(d.kind == "method" for d in pieces)
    _check_invariants(source.encode(), drafts)


def test_long_function_split_at_statements_with_signature_context() -> None:
    lines = ["def long_one(a: int,", "             b: int) -> int:", '    """Sums."""', "    total = 0"]
    lines += [f"    total += a * {i} + b" for i in range(300)]
    lines.append("    return total")
    source = "\n".join(lines) + "\n"
    drafts = chunk_file("long.py", source.encode(), max_lines=120)
    assert [(d.kind, d.symbol, d.line_start, d.line_end) for d in drafts] == [
        ("function", "long_one", 1, 120),
        ("function", "long_one", 121, 240),
        ("function", "long_one", 241, 305),
    ]
    assert drafts[0].context == ""
    signature = "def long_one(a: int,\n             b: int) -> int:"
    assert [d.context for d in drafts[1:]] == [signature, signature]
    _check_invariants(source.encode(), drafts)


def test_long_brace_function_is_cut_between_statements() -> None:
    body = []
    for i in range(40):  # 40 statements of 3 lines each
        body += [f"  if (x > {i}) {{", f"    x -= {i};", "  }"]
    source = "\n".join(["function crunch(x) {", *body, "  return x;", "}"]) + "\n"
    drafts = chunk_file("crunch.js", source.encode(), max_lines=50)
    # Statement i covers lines 2 + 3i .. 4 + 3i; a piece may not end inside one.
    # The last piece also takes the return statement and the closing brace.
    statement_ends = {4 + 3 * i for i in range(40)} | {123}
    assert all(d.line_end in statement_ends for d in drafts)
    assert all(d.line_end - d.line_start + 1 <= 50 for d in drafts)
    assert [d.line_start for d in drafts] == [1, 50, 98]
    assert {d.symbol for d in drafts} == {"crunch"}
    assert [d.context for d in drafts[1:]] == ["function crunch(x) {"] * 2
    _check_invariants(source.encode(), drafts)


def test_large_module_level_code_is_split_with_header_context() -> None:
    entries = [f'    "key{i}": {i},' for i in range(150)]
    source = "\n".join(["CONFIG = {", *entries, "}", "", "print(CONFIG)"]) + "\n"
    drafts = chunk_file("config.py", source.encode(), max_lines=60)
    assert [(d.kind, d.line_start, d.line_end) for d in drafts] == [
        ("module", 1, 60),
        ("module", 61, 120),
        ("module", 121, 152),
        ("module", 154, 154),
    ]
    assert [d.context for d in drafts] == ["", "CONFIG = {", "CONFIG = {", ""]
    _check_invariants(source.encode(), drafts)


def test_markdown_long_section_is_split_at_paragraphs() -> None:
    paragraphs = [f"Paragraph {i} line one.\nParagraph {i} line two.\n" for i in range(60)]
    source = "# Guide\n\n## Usage\n\n" + "\n".join(paragraphs)
    drafts = chunk_file("guide.md", source.encode(), max_lines=40)
    assert {d.symbol for d in drafts} == {"Guide > Usage"}
    assert all(d.line_end - d.line_start + 1 <= 40 for d in drafts)
    # Paragraph i occupies lines 5 + 3i and 6 + 3i: pieces start at a paragraph.
    assert all(d.line_start == 1 or (d.line_start - 5) % 3 == 0 for d in drafts)
    assert drafts[0].line_start == 1
    assert all(d.context == "# Guide\n## Usage" for d in drafts[1:])
    _check_invariants(source.encode(), drafts)


def test_unknown_extension_falls_back_to_windows() -> None:
    source = "".join(f"line {i}\n" for i in range(1, 151))
    drafts = chunk_file("data.xyz", source.encode(), window_lines=60, window_overlap=10)
    assert [(d.kind, d.symbol, d.line_start, d.line_end) for d in drafts] == [
        ("window", None, 1, 60),
        ("window", None, 51, 110),
        ("window", None, 101, 150),
    ]
    assert {d.language for d in drafts} == {"text"}
    _check_invariants(source.encode(), drafts, windows=True)


def test_short_text_file_is_one_window() -> None:
    drafts = chunk_file("LICENSE", b"MIT License\n\nCopyright (c) 2024\n")
    assert [(d.kind, d.line_start, d.line_end, d.language) for d in drafts] == [("window", 1, 3, "text")]


@pytest.mark.parametrize(
    ("path", "data", "reason"),
    [
        ("a.py", b"", "empty"),
        ("a.py", b"  \n\n\t\n", "empty"),
        ("a.py", b"x = 1\n" * 2000, "too_large"),
        ("logo.png", b"\x89PNG\r\n\x1a\nrest", "binary"),
        ("blob", b"abc\x00def\n", "binary"),
        ("lib.so", b"not really binary", "binary"),
        ("vendor/app.min.js", b"var a=1;\n", "minified"),
        ("static/site.min.css", b"a{b:c}\n", "minified"),
        ("dist/bundle.js", b"var a=1;" * 200, "minified"),
        ("gen.py", b"x = 1\n" * 10 + b"y = '" + b"a" * 6000 + b"'\n", "minified"),
        ("notes.md", b"word " * 1200 + b"\n", None),
        ("README", b"word " * 1200 + b"\n", None),
        ("app.py", b"print('hi')\n", None),
    ],
)
def test_classify_file(path: str, data: bytes, reason: str | None) -> None:
    assert classify_file(path, data, max_bytes=10_000) == reason


def test_decode_latin1_keeps_lines() -> None:
    data = "# café\nname = 'naïve'\n\ndef f():\n    return 'é'\n".encode("latin-1")
    text = decode_source(data)
    assert text.split("\n")[0] == "# café"
    assert text.count("\n") == data.count(b"\n")
    drafts = chunk_file("legacy.py", data)
    assert [(d.kind, d.symbol, d.line_start, d.line_end) for d in drafts] == [
        ("module", None, 1, 2),
        ("function", "f", 4, 5),
    ]
    assert "'é'" in drafts[1].text
    _check_invariants(data, drafts)


def test_decode_variants() -> None:
    assert decode_source(b"\xef\xbb\xbfx = 1\n") == "x = 1\n"
    assert decode_source(b"\x93quoted\x94\n") == "\u201cquoted\u201d\n"
    mostly_utf8 = "héllo wörld ünïcode\n".encode() + b"bad \xff byte\n"
    assert decode_source(mostly_utf8) == "héllo wörld ünïcode\nbad \ufffd byte\n"
    # Form feed and U+2028 are not line breaks for citations (str.splitlines would split).
    assert len(_cited_lines("a\x0cb\nc\u2028d\n".encode())) == 3


def test_crlf_gives_same_chunks_without_carriage_returns() -> None:
    lf = PYTHON.encode()
    crlf = PYTHON.replace("\n", "\r\n").encode()
    expected = [(d.kind, d.symbol, d.line_start, d.line_end, d.text) for d in chunk_file("a.py", lf)]
    got = [(d.kind, d.symbol, d.line_start, d.line_end, d.text) for d in chunk_file("a.py", crlf)]
    assert got == expected
    assert all("\r" not in d.text for d in chunk_file("a.py", crlf))
    mixed = b"import os\r\n\r\ndef f():\n    return 1\r\n"
    drafts = chunk_file("mixed.py", mixed)
    assert [(d.kind, d.line_start, d.line_end, d.text) for d in drafts] == [
        ("module", 1, 1, "import os"),
        ("function", 3, 4, "def f():\n    return 1"),
    ]


def test_no_trailing_newline_and_bom() -> None:
    data = b"\xef\xbb\xbfimport os\n\ndef f():\n    return 1"
    drafts = chunk_file("a.py", data)
    assert [(d.kind, d.symbol, d.line_start, d.line_end) for d in drafts] == [
        ("module", None, 1, 1),
        ("function", "f", 3, 4),
    ]
    assert drafts[1].text == "def f():\n    return 1"
    _check_invariants(data, drafts)


def test_syntax_errors_still_chunk_what_parses() -> None:
    source = (
        "import os\n\n\ndef ok_before(x):\n    return x + 1\n\n\ndef broken(:\n    return (\n\n\n"
        "def ok_after(y):\n    return y * 2\n\n\nclass Tail:\n    pass\n"
    )
    drafts = chunk_file("broken.py", source.encode())
    assert [(d.kind, d.symbol, d.line_start, d.line_end) for d in drafts] == [
        ("module", None, 1, 1),
        ("function", "ok_before", 4, 5),
        ("function", "broken", 8, 9),
        ("function", "ok_after", 12, 13),
        ("class", "Tail", 16, 17),
    ]
    _check_invariants(source.encode(), drafts)


def test_badly_broken_file_keeps_invariants() -> None:
    source = (
        "function a() {\n  return 1;\n}\n\nfunction b( {\n  if (x {\n}\n\nclass C {\n  m() { return 2; }\n}\n"
    )
    drafts = chunk_file("broken.js", source.encode())
    assert (
        drafts[0].kind,
        drafts[0].symbol,
        drafts[0].line_start,
        drafts[0].line_end,
    ) == ("function", "a", 1, 3)
    _check_invariants(source.encode(), drafts)


def test_empty_and_odd_inputs_never_raise() -> None:
    assert chunk_file("a.py", b"") == []
    assert chunk_file("a.py", b"\n\n  \n") == []
    assert chunk_file("a.md", b"\r\r\r") == []
    one_line = b"x = " + b"1 + " * 20000 + b"1\n"
    drafts = chunk_file("huge_line.py", one_line)
    assert [(d.line_start, d.line_end) for d in drafts] == [(1, 1)]
    rng = random.Random(7)
    for _ in range(30):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
        for path in ("a.py", "a.ts", "a.rs", "a.md", "a.json", "a.unknown"):
            for draft in chunk_file(path, data, max_lines=10):
                lines = _cited_lines(data)
                assert draft.text == "\n".join(lines[draft.line_start - 1 : draft.line_end])


def test_deep_nesting_is_bounded() -> None:
    source = "\n".join("    " * i + "if x:" for i in range(200)) + "\n" + "    " * 200 + "pass\n"
    drafts = chunk_file("deep.py", source.encode(), max_lines=20)
    assert all(d.line_end - d.line_start + 1 <= 20 for d in drafts)
    _check_invariants(source.encode(), drafts)


def test_header_file_with_cpp_content_uses_cpp() -> None:
    drafts = chunk_file("include/shape.h", b"namespace geo {\nclass Shape {\n public:\n  int x;\n};\n}\n")
    assert {d.language for d in drafts} == {"cpp"}
    assert [(d.kind, d.symbol) for d in drafts] == [("module", None), ("class", "Shape")]


def test_shebang_without_extension() -> None:
    drafts = chunk_file("bin/tool", b"#!/usr/bin/env python3\nimport sys\n\n\ndef main():\n    pass\n")
    assert [(d.kind, d.symbol, d.language) for d in drafts] == [
        ("module", None, "python"),
        ("function", "main", "python"),
    ]


@pytest.mark.parametrize(
    ("path", "language"),
    [
        ("pkg/mod.py", "python"),
        ("types.pyi", "python"),
        ("web/app.jsx", "javascript"),
        ("web/app.mjs", "javascript"),
        ("web/app.ts", "typescript"),
        ("web/App.tsx", "tsx"),
        ("Main.java", "java"),
        ("main.go", "go"),
        ("lib.rs", "rust"),
        ("util.c", "c"),
        ("util.h", "c"),
        ("util.hpp", "cpp"),
        ("kernel.cu", "cuda"),
        ("Program.cs", "csharp"),
        ("app.rb", "ruby"),
        ("Rakefile", "ruby"),
        ("index.php", "php"),
        ("Main.kt", "kotlin"),
        ("build.gradle.kts", "kotlin"),
        ("Main.scala", "scala"),
        ("App.swift", "swift"),
        ("run.sh", "bash"),
        ("init.lua", "lua"),
        ("Main.hs", "haskell"),
        ("cart.ex", "elixir"),
        ("analysis.R", "r"),
        ("main.dart", "dart"),
        ("geo.jl", "julia"),
        ("Token.sol", "solidity"),
        ("shop.proto", "proto"),
        ("main.tf", "hcl"),
        ("Greeter.pm", "perl"),
        ("Dockerfile", "dockerfile"),
        ("Dockerfile.prod", "dockerfile"),
        ("Makefile", "make"),
        ("CMakeLists.txt", "cmake"),
        ("config.yaml", "yaml"),
        ("package.json", "json"),
        ("README.md", "markdown"),
        ("docs/index.rst", "rst"),
        ("notes.txt", "text"),
        ("LICENSE", "text"),
        ("data.xyz", None),
        ("noext", None),
    ],
)
def test_detect_language(path: str, language: str | None) -> None:
    assert detect_language(path) == language


# --- configuration files: a chunk per top-level entry ---------------------------------------

SETTINGS_YAML = """\
# Service settings: read at start-up.

server:
  host: 0.0.0.0
  port: 8080
  workers: 4
  # tls: off by default
  tls: false
  timeout_s: 30

# Who may call the API.
auth:
  issuer: https://login.example.com
  audience: payments
  leeway_s: 30
  roles:
    - manager
    - clerk
  # secret: ${AUTH_SECRET}

log_level: info
trace: false
metrics: true

refunds:
  window_days: 30
  manager_threshold: 50
  currencies: [EUR, USD]
  notify: refunds@example.com
  retries: 3

database:
  url: postgres://ledger
  pool_size: 10
  echo: false

cache:
  backend: redis
  url: redis://cache:6379
  ttl_s: 300
  max_entries: 10000
"""

MAKEFILE = """\
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
\ttest -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
\t$(BIN)/pip install -e .
\ttouch $@

# Index the repositories, then serve the chat app and the Dagster UI.
run: install
\t$(BIN)/app index
\t$(BIN)/app serve

test: install
\t$(BIN)/pytest

lint: install
\t$(BIN)/ruff check .
\t$(BIN)/mypy app
\t$(BIN)/ruff format --check .

bench: install
\t$(BIN)/python -m app.bench
\t$(BIN)/python -m app.bench --set quick

docs: install
\t$(BIN)/mkdocs build
\t$(BIN)/mkdocs serve

release: test lint
\t$(BIN)/python -m build
\t$(BIN)/twine upload dist/*

clean:
\trm -rf .app $(VENV)
\trm -rf dist build
"""

MANIFESTS = "---\n".join(
    f"apiVersion: v1\nkind: {kind}\nmetadata:\n  name: web\n  labels:\n    app: web\nspec:\n"
    + "".join(f"  field_{i}: {i}\n" for i in range(6))
    for kind in ("Deployment", "Service", "ConfigMap")
)


@pytest.mark.parametrize(
    ("path", "source", "max_lines", "expected"),
    [
        pytest.param(
            "settings.yaml",
            SETTINGS_YAML,
            120,
            [
                # The file's header comment opens the first entry; "# Who may call the API."
                # is auth's; the indented "# secret:" stays with auth, the key it comments.
                ("section", "server", 1, 9),
                ("section", "auth", 11, 19),
                # One-line settings side by side are one chunk.
                ("section", None, 21, 23),
                ("section", "refunds", 25, 30),
                ("section", "database", 32, 35),
                ("section", "cache", 37, 41),
            ],
            id="yaml",
        ),
        pytest.param(
            "Makefile",
            MAKEFILE,
            120,
            [
                ("section", None, 1, 7),
                ("section", "$(VENV)/.installed", 9, 12),
                ("section", "run", 14, 17),
                ("section", "test", 19, 20),
                ("section", "lint", 22, 25),
                ("section", "bench", 27, 29),
                ("section", "docs", 31, 33),
                ("section", "release", 35, 37),
                ("section", "clean", 39, 41),
            ],
            id="make",
        ),
        pytest.param(
            "deploy/web.yaml",
            MANIFESTS,
            10,
            [
                # A document of a stream is an entry, named by its kind and name; one longer
                # than max_lines is cut, its later piece named by its context.
                ("section", "Deployment web", 1, 10),
                ("section", "Deployment web", 11, 13),
                ("section", "Service web", 14, 23),
                ("section", "Service web", 24, 27),
                ("section", "ConfigMap web", 28, 37),
                ("section", "ConfigMap web", 38, 41),
            ],
            id="yaml-documents",
        ),
    ],
)
def test_config_files_are_cut_at_their_top_level_entries(
    path: str, source: str, max_lines: int, expected: Expected
) -> None:
    """A question about the `llm:` settings or the `run` target finds that entry: packed into
    120-line pieces, cia.yaml's `llm:` sat in the middle of a 115-line chunk whose first 256
    tokens (all the embedding model reads) were about other keys."""
    drafts = chunk_file(path, source.encode(), max_lines=max_lines)
    assert [(d.kind, d.symbol, d.line_start, d.line_end) for d in drafts] == expected
    # Only a later piece of a long entry has a context: the entry's name.
    assert [d.context for d in drafts] == [
        d.symbol if path == "deploy/web.yaml" and d.line_start in (11, 24, 38) else "" for d in drafts
    ]
    _check_invariants(source.encode(), drafts)


def test_a_short_config_file_stays_whole_and_toml_tables_are_named() -> None:
    short = "[tool.ruff]\nline-length = 110\n\n[tool.mypy]\nstrict = true\n"
    assert [(d.kind, d.line_start, d.line_end) for d in chunk_file("pyproject.toml", short.encode())] == [
        ("module", 1, 5)
    ]
    tables = "".join(
        f"[tool.{name}]\n" + "".join(f"option_{i} = {i}\n" for i in range(7)) + "\n"
        for name in ("ruff", "mypy", "pytest", "coverage", "isort")
    )
    drafts = chunk_file("pyproject.toml", tables.encode())
    assert [(d.symbol, d.line_start, d.line_end) for d in drafts] == [
        (f"tool.{name}", 1 + 9 * i, 8 + 9 * i)
        for i, name in enumerate(("ruff", "mypy", "pytest", "coverage", "isort"))
    ]
    _check_invariants(tables.encode(), drafts)

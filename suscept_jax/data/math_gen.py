"""Small dm_mathematics-style generator: templated questions with exactly computed answers.

Stands in for the Pile's DM Mathematics subset (which we cannot download offline): short
questions in the same phrasing families (arithmetic, linear equations, derivatives, polynomial
evaluation/expansion, letter-drawing probabilities, sequences, number theory), each answered
with exact integer/fraction arithmetic. Expressions use Python syntax (`*`, `**`) like the
original, so answers can be checked by substitution. Everything is a pure function of the seed.
"""

import dataclasses
import math
import random
from fractions import Fraction
from typing import Callable

_VARIABLES = "abcdfghjklmnpqrstuvwyz"


@dataclasses.dataclass(frozen=True)
class Problem:
  """One question/answer pair and the module (template family) that produced it."""

  module: str
  question: str
  answer: str


# --- formatting helpers -------------------------------------------------------------------


def format_number(value) -> str:
  """Integer or reduced fraction as text: 7, -3/4."""
  value = Fraction(value)
  if value.denominator == 1:
    return str(value.numerator)
  return f"{value.numerator}/{value.denominator}"


def _paren(value: int) -> str:
  """Negative numbers in parentheses, as dm_mathematics writes operands like (-3)."""
  return f"({value})" if value < 0 else str(value)


def format_polynomial(coefficients: dict[int, int], variable: str) -> str:
  """Polynomial {exponent: coefficient} in descending powers, e.g. '-6*x**2 + 5'."""
  terms = [(power, coef) for power, coef in sorted(coefficients.items(), reverse=True) if coef]
  if not terms:
    return "0"
  text = ""
  for index, (power, coef) in enumerate(terms):
    magnitude = abs(coef)
    if power == 0:
      body = str(magnitude)
    else:
      monomial = variable if power == 1 else f"{variable}**{power}"
      body = monomial if magnitude == 1 else f"{magnitude}*{monomial}"
    if index == 0:
      text = f"-{body}" if coef < 0 else body
    else:
      text += f" - {body}" if coef < 0 else f" + {body}"
  return text


def _linear_side(terms: list[tuple[int, str]]) -> str:
  """Sum of (coefficient, symbol) terms, symbol '' meaning a constant; zero terms dropped."""
  text = ""
  for coef, symbol in terms:
    if coef == 0:
      continue
    magnitude = abs(coef)
    body = str(magnitude) if not symbol else (symbol if magnitude == 1 else f"{magnitude}*{symbol}")
    if not text:
      text = f"-{body}" if coef < 0 else body
    else:
      text += f" - {body}" if coef < 0 else f" + {body}"
  return text or "0"


def _nonzero(rng: random.Random, low: int, high: int) -> int:
  value = 0
  while value == 0:
    value = rng.randint(low, high)
  return value


def _random_polynomial(rng: random.Random, max_degree: int) -> dict[int, int]:
  degree = rng.randint(1, max_degree)
  coefficients = {degree: _nonzero(rng, -9, 9)}
  for power in range(degree):
    if rng.random() < 0.6:
      coefficients[power] = rng.randint(-12, 12)
  return coefficients


def _evaluate_polynomial(coefficients: dict[int, int], x) -> Fraction:
  return sum(
      (Fraction(coef) * Fraction(x) ** power for power, coef in coefficients.items()), Fraction(0)
  )


def _differentiate(coefficients: dict[int, int]) -> dict[int, int]:
  return {power - 1: coef * power for power, coef in coefficients.items() if power > 0}


# --- templates ------------------------------------------------------------------------------


def arithmetic_add_sub(rng: random.Random) -> Problem:
  """'What is 12 - (-7) + 3?' style integer sums."""
  operands = [rng.randint(-60, 60) for _ in range(rng.randint(2, 4))]
  operators = [rng.choice("+-") for _ in operands[1:]]
  expression = str(operands[0])
  total = operands[0]
  for operator, operand in zip(operators, operands[1:]):
    expression += f" {operator} {_paren(operand)}"
    total += operand if operator == "+" else -operand
  template = rng.choice(["What is {}?", "Calculate {}.", "Evaluate {}.", "{}"])
  return Problem("arithmetic__add_sub", template.format(expression), format_number(total))


def arithmetic_mixed(rng: random.Random) -> Problem:
  """Products and quotients of small integers with an exact (possibly fractional) result."""
  value = Fraction(_nonzero(rng, -20, 20))
  expression = _paren(int(value))
  for _ in range(rng.randint(1, 3)):
    operand = _nonzero(rng, -12, 12)
    if rng.random() < 0.5:
      expression += f"*{_paren(operand)}"
      value *= operand
    else:
      expression += f"/{_paren(operand)}"
      value /= operand
  template = rng.choice(
      ["Calculate {}.", "What is {}?", "Evaluate {}.", "What is the value of {}?"]
  )
  return Problem("arithmetic__mixed", template.format(expression), format_number(value))


def arithmetic_div(rng: random.Random) -> Problem:
  """'Divide -312 by 13.' with an integer quotient."""
  divisor = _nonzero(rng, -40, 40)
  quotient = _nonzero(rng, -300, 300)
  dividend = divisor * quotient
  template = rng.choice(
      ["Divide {} by {}.", "What is {} divided by {}?", "Calculate {} divided by {}."]
  )
  return Problem("arithmetic__div", template.format(dividend, divisor), str(quotient))


def linear_1d(rng: random.Random) -> Problem:
  """'Solve -3*d + 17 = 2*d - 8 for d.' with an integer root."""
  variable = rng.choice(_VARIABLES)
  root = rng.randint(-15, 15)
  left_coef = _nonzero(rng, -12, 12)
  right_coef = rng.randint(-12, 12)
  while right_coef == left_coef:
    right_coef = rng.randint(-12, 12)
  left_const = rng.randint(-40, 40)
  right_const = (left_coef - right_coef) * root + left_const
  left = _linear_side([(left_coef, variable), (left_const, "")])
  right = _linear_side([(right_coef, variable), (right_const, "")])
  return Problem("algebra__linear_1d", f"Solve {left} = {right} for {variable}.", str(root))


def linear_2d(rng: random.Random) -> Problem:
  """'Solve 2*x + 3*y = 7, x - y = 1 for x.' with an integer solution."""
  first, second = rng.sample(_VARIABLES, 2)
  solution = {first: rng.randint(-10, 10), second: rng.randint(-10, 10)}
  while True:
    a, b, c, d = (_nonzero(rng, -7, 7) for _ in range(4))
    if a * d - b * c:
      break
  equations = []
  for coef_first, coef_second in ((a, b), (c, d)):
    constant = coef_first * solution[first] + coef_second * solution[second]
    equations.append(f"{_linear_side([(coef_first, first), (coef_second, second)])} = {constant}")
  asked = rng.choice([first, second])
  return Problem(
      "algebra__linear_2d",
      f"Solve {equations[0]}, {equations[1]} for {asked}.",
      str(solution[asked]),
  )


def differentiate(rng: random.Random) -> Problem:
  """First or second derivative of an integer polynomial."""
  variable = rng.choice(_VARIABLES)
  polynomial = _random_polynomial(rng, 5)
  order = 1 if rng.random() < 0.7 else 2
  derivative = polynomial
  for _ in range(order):
    derivative = _differentiate(derivative)
  expression = format_polynomial(polynomial, variable)
  if order == 1:
    template = rng.choice(
        [
            "Differentiate {p} with respect to {v}.",
            "What is the derivative of {p} wrt {v}?",
            "Find the first derivative of {p} wrt {v}.",
        ]
    )
  else:
    template = rng.choice(
        [
            "Find the second derivative of {p} wrt {v}.",
            "What is the second derivative of {p} wrt {v}?",
        ]
    )
  return Problem(
      "calculus__differentiate",
      template.format(p=expression, v=variable),
      format_polynomial(derivative, variable),
  )


def evaluate_function(rng: random.Random) -> Problem:
  """'Let f(x) = 3*x**2 - x + 1. What is f(2)?'"""
  name = rng.choice("fghjkqrstuvw")
  variable = rng.choice(_VARIABLES)
  polynomial = _random_polynomial(rng, 3)
  point = rng.randint(-6, 6)
  value = _evaluate_polynomial(polynomial, point)
  definition = f"Let {name}({variable}) = {format_polynomial(polynomial, variable)}."
  question = rng.choice(
      ["What is {n}({x})?", "Determine {n}({x}).", "Calculate {n}({x}).", "Give {n}({x})."]
  ).format(n=name, x=point)
  return Problem("polynomials__evaluate", f"{definition} {question}", format_number(value))


def expand_product(rng: random.Random) -> Problem:
  """'Expand (2*x - 3)*(x + 4).'"""
  variable = rng.choice(_VARIABLES)
  a, b = _nonzero(rng, -6, 6), rng.randint(-9, 9)
  c, d = _nonzero(rng, -6, 6), rng.randint(-9, 9)
  product = {2: a * c, 1: a * d + b * c, 0: b * d}
  left = _linear_side([(a, variable), (b, "")])
  right = _linear_side([(c, variable), (d, "")])
  template = rng.choice(
      ["Expand ({l})*({r}).", "Expand ({l})*({r}) and give the result in descending powers."]
  )
  return Problem(
      "polynomials__expand", template.format(l=left, r=right), format_polynomial(product, variable)
  )


def collect_terms(rng: random.Random) -> Problem:
  """'Collect the terms in 3*b**2 - 5*b**2 + 7*b**2.'"""
  variable = rng.choice(_VARIABLES)
  power = rng.randint(1, 3)
  coefficients = [_nonzero(rng, -20, 20) for _ in range(rng.randint(2, 4))]
  monomial = variable if power == 1 else f"{variable}**{power}"
  expression = _linear_side([(coef, monomial) for coef in coefficients])
  return Problem(
      "algebra__collect",
      f"Collect the terms in {expression}.",
      format_polynomial({power: sum(coefficients)}, variable),
  )


def simplify_powers(rng: random.Random) -> Problem:
  """'Simplify x**4*x**3/x**2 assuming x is positive.'"""
  variable = rng.choice(_VARIABLES)
  first, second, third = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
  exponent = first + second - third
  answer = "1" if exponent == 0 else (variable if exponent == 1 else f"{variable}**{exponent}")
  return Problem(
      "algebra__simplify_power",
      f"Simplify {variable}**{first}*{variable}**{second}/{variable}**{third} assuming "
      f"{variable} is positive.",
      answer,
  )


def letter_probability(rng: random.Random) -> Problem:
  """'Two letters picked without replacement from {a: 3, k: 2}. What is prob of picking 2 a?'"""
  letters = rng.sample("abcdefghijklmnopqrstuvwxyz", rng.randint(2, 4))
  counts = {letter: rng.randint(1, 6) for letter in letters}
  total = sum(counts.values())
  drawn = rng.randint(2, min(4, total))
  wanted: dict[str, int] = {}
  remaining = drawn
  for letter in letters:
    take = rng.randint(0, min(counts[letter], remaining))
    if take:
      wanted[letter] = take
    remaining -= take
  if remaining:  # put the rest on letters with spare copies
    for letter in letters:
      spare = min(counts[letter] - wanted.get(letter, 0), remaining)
      if spare:
        wanted[letter] = wanted.get(letter, 0) + spare
        remaining -= spare
  favourable = math.prod(math.comb(counts[letter], k) for letter, k in wanted.items())
  probability = Fraction(favourable, math.comb(total, drawn))
  number_words = {2: "Two", 3: "Three", 4: "Four"}
  bag = "{" + ", ".join(f"{letter}: {counts[letter]}" for letter in letters) + "}"
  pattern = " and ".join(f"{k} {letter}" for letter, k in wanted.items())
  question = (
      f"{number_words[drawn]} letters picked without replacement from {bag}. "
      f"What is prob of picking {pattern}?"
  )
  return Problem("probability__swr_p_level_set", question, format_number(probability))


def next_term(rng: random.Random) -> Problem:
  """'What is next in 4, 9, 16, 25?' for linear or quadratic sequences."""
  quadratic = rng.randint(-5, 5) if rng.random() < 0.5 else 0
  linear, constant = rng.randint(-20, 20), rng.randint(-50, 50)
  if quadratic == 0 and linear == 0:
    linear = _nonzero(rng, -20, 20)
  terms = [quadratic * n * n + linear * n + constant for n in range(1, 6)]
  shown, following = terms[:4], terms[4]
  template = rng.choice(
      ["What is next in {}?", "What comes next: {}?", "What is the next term in {}?"]
  )
  return Problem(
      "sequences__next_term", template.format(", ".join(map(str, shown))), str(following)
  )


def number_theory(rng: random.Random) -> Problem:
  """Greatest common divisor, lowest common multiple or remainder questions."""
  kind = rng.choice(["gcd", "lcm", "remainder"])
  if kind == "gcd":
    factor = rng.randint(2, 40)
    x, y = factor * rng.randint(1, 30), factor * rng.randint(1, 30)
    template = rng.choice(
        [
            "Calculate the greatest common divisor of {} and {}.",
            "What is the highest common factor of {} and {}?",
        ]
    )
    return Problem("numbers__gcd", template.format(x, y), str(math.gcd(x, y)))
  if kind == "lcm":
    x, y = rng.randint(2, 60), rng.randint(2, 60)
    template = rng.choice(
        [
            "Calculate the lowest common multiple of {} and {}.",
            "What is the smallest common multiple of {} and {}?",
        ]
    )
    return Problem("numbers__lcm", template.format(x, y), str(x * y // math.gcd(x, y)))
  dividend, divisor = rng.randint(10, 5000), rng.randint(2, 60)
  template = rng.choice(
      [
          "What is the remainder when {} is divided by {}?",
          "Calculate the remainder when {} is divided by {}.",
      ]
  )
  return Problem(
      "numbers__div_remainder", template.format(dividend, divisor), str(dividend % divisor)
  )


MODULES: dict[str, Callable[[random.Random], Problem]] = {
    "arithmetic__add_sub": arithmetic_add_sub,
    "arithmetic__mixed": arithmetic_mixed,
    "arithmetic__div": arithmetic_div,
    "algebra__linear_1d": linear_1d,
    "algebra__linear_2d": linear_2d,
    "calculus__differentiate": differentiate,
    "polynomials__evaluate": evaluate_function,
    "polynomials__expand": expand_product,
    "algebra__collect": collect_terms,
    "algebra__simplify_power": simplify_powers,
    "probability__swr_p_level_set": letter_probability,
    "sequences__next_term": next_term,
    "numbers__theory": number_theory,
}


def generate_problems(module: str, count: int, seed: int = 0) -> list[Problem]:
  """`count` problems from one template family; same (module, count, seed) -> same problems."""
  if module not in MODULES:
    raise ValueError(f"Unknown math module {module!r}; known: {sorted(MODULES)}")
  rng = random.Random(f"{module}/{seed}")
  return [MODULES[module](rng) for _ in range(count)]


def generate_batch(index: int, seed: int = 0, problems_per_batch: int = 32) -> str:
  """Document `index`: one module's problems as 'question\\nanswer' lines, like dm_math files.

  Modules cycle with the index so any prefix of batches covers all of them; each batch has its
  own seed, so a batch does not depend on how many others were generated.
  """
  names = list(MODULES)
  module = names[index % len(names)]
  problems = generate_problems(module, problems_per_batch, seed=seed * 1_000_003 + index)
  return "\n".join(f"{p.question}\n{p.answer}" for p in problems)

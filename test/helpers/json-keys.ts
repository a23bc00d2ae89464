// Duplicate keys in a JSON text, which JSON.parse hides (it keeps the last one): a small scan of
// the text's objects, for tests that check log lines. Not a test file itself.

/** Every key that appears more than once in the same object, as `path.key` (objects at any depth). */
export function duplicateKeys(text: string): string[] {
  const dups: string[] = [];
  const stack: { obj: boolean; keys: Set<string>; expectKey: boolean; path: string }[] = [];
  let lastKey = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    const top = stack[stack.length - 1];
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const s = JSON.parse(text.slice(i, j + 1)) as string;
      if (top?.obj && top.expectKey) {
        if (top.keys.has(s)) dups.push(`${top.path}${s}`);
        top.keys.add(s);
        top.expectKey = false;
        lastKey = s;
      }
      i = j;
    } else if (c === '{' || c === '[') {
      const path = top ? `${top.path}${top.obj ? lastKey : '[]'}.` : '';
      stack.push({ obj: c === '{', keys: new Set(), expectKey: c === '{', path });
    } else if (c === '}' || c === ']') {
      stack.pop();
    } else if (c === ',' && top?.obj) {
      top.expectKey = true;
    }
  }
  return dups;
}

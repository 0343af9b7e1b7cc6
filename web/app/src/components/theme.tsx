import { useEffect, useState } from 'preact/hooks';

type Theme = 'light' | 'dark' | 'auto';
const KEY = 'fetchml.theme';

/** The system's theme by default (prefers-color-scheme); a choice is remembered. */
export function ThemeToggle() {
  const [theme, setTheme] = useState<Theme>(() => (localStorage.getItem(KEY) as Theme | null) ?? 'auto');
  useEffect(() => {
    if (theme === 'auto') {
      document.documentElement.removeAttribute('data-theme');
      localStorage.removeItem(KEY);
    } else {
      document.documentElement.setAttribute('data-theme', theme);
      localStorage.setItem(KEY, theme);
    }
  }, [theme]);
  const next: Record<Theme, Theme> = { auto: 'dark', dark: 'light', light: 'auto' };
  return (
    <button type="button" class="link" onClick={() => setTheme(next[theme])} title="Theme: system, dark or light">
      Theme: {theme === 'auto' ? 'system' : theme}
    </button>
  );
}

// Applied before the first render so a dark page does not flash light.
const saved = typeof localStorage !== 'undefined' ? localStorage.getItem(KEY) : null;
if (saved === 'light' || saved === 'dark') document.documentElement.setAttribute('data-theme', saved);

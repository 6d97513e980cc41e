import { start } from "./signin";
import "./style.css";

void start(document.getElementById("app")!);

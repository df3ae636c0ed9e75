"""Writes the bundled example data (deterministic; run from anywhere):

    corpus/en.txt, corpus/zh.txt   pretraining text: documents separated by blank lines
    chat_sft.jsonl                 chat SFT data (ChatML messages) for `paddle-qwen2 finetune` and `make demo`
    sentiment_{train,eval}.csv     text,label (0 = negative, 1 = positive) for sequence classification

All text here is written for this project (facts, templates and the prose paragraphs in prose.py), plus a few
lines of classical Chinese (Analects, Dao De Jing) that are in the public domain.

    python examples/data/build_data.py
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from prose import CLASSICAL_ZH, PROSE_EN, PROSE_ZH  # the script's own folder is on sys.path

HERE = Path(__file__).resolve().parent

SEED = 1234

# (country, 国家, capital, 首都, continent, 大洲, language, 语言)
COUNTRIES = [
    ("France", "法国", "Paris", "巴黎", "Europe", "欧洲", "French", "法语"),
    ("Germany", "德国", "Berlin", "柏林", "Europe", "欧洲", "German", "德语"),
    ("Italy", "意大利", "Rome", "罗马", "Europe", "欧洲", "Italian", "意大利语"),
    ("Spain", "西班牙", "Madrid", "马德里", "Europe", "欧洲", "Spanish", "西班牙语"),
    ("Portugal", "葡萄牙", "Lisbon", "里斯本", "Europe", "欧洲", "Portuguese", "葡萄牙语"),
    ("England", "英国", "London", "伦敦", "Europe", "欧洲", "English", "英语"),
    ("Russia", "俄罗斯", "Moscow", "莫斯科", "Europe", "欧洲", "Russian", "俄语"),
    ("Greece", "希腊", "Athens", "雅典", "Europe", "欧洲", "Greek", "希腊语"),
    ("Sweden", "瑞典", "Stockholm", "斯德哥尔摩", "Europe", "欧洲", "Swedish", "瑞典语"),
    ("Norway", "挪威", "Oslo", "奥斯陆", "Europe", "欧洲", "Norwegian", "挪威语"),
    ("Poland", "波兰", "Warsaw", "华沙", "Europe", "欧洲", "Polish", "波兰语"),
    ("Finland", "芬兰", "Helsinki", "赫尔辛基", "Europe", "欧洲", "Finnish", "芬兰语"),
    ("Austria", "奥地利", "Vienna", "维也纳", "Europe", "欧洲", "German", "德语"),
    ("Ireland", "爱尔兰", "Dublin", "都柏林", "Europe", "欧洲", "English", "英语"),
    ("China", "中国", "Beijing", "北京", "Asia", "亚洲", "Chinese", "汉语"),
    ("Japan", "日本", "Tokyo", "东京", "Asia", "亚洲", "Japanese", "日语"),
    ("Korea", "韩国", "Seoul", "首尔", "Asia", "亚洲", "Korean", "韩语"),
    ("India", "印度", "New Delhi", "新德里", "Asia", "亚洲", "Hindi", "印地语"),
    ("Thailand", "泰国", "Bangkok", "曼谷", "Asia", "亚洲", "Thai", "泰语"),
    ("Vietnam", "越南", "Hanoi", "河内", "Asia", "亚洲", "Vietnamese", "越南语"),
    ("Indonesia", "印度尼西亚", "Jakarta", "雅加达", "Asia", "亚洲", "Indonesian", "印尼语"),
    ("Mongolia", "蒙古", "Ulaanbaatar", "乌兰巴托", "Asia", "亚洲", "Mongolian", "蒙古语"),
    ("Iran", "伊朗", "Tehran", "德黑兰", "Asia", "亚洲", "Persian", "波斯语"),
    ("Turkey", "土耳其", "Ankara", "安卡拉", "Asia", "亚洲", "Turkish", "土耳其语"),
    ("Egypt", "埃及", "Cairo", "开罗", "Africa", "非洲", "Arabic", "阿拉伯语"),
    ("Kenya", "肯尼亚", "Nairobi", "内罗毕", "Africa", "非洲", "Swahili", "斯瓦希里语"),
    ("Morocco", "摩洛哥", "Rabat", "拉巴特", "Africa", "非洲", "Arabic", "阿拉伯语"),
    ("Ethiopia", "埃塞俄比亚", "Addis Ababa", "亚的斯亚贝巴", "Africa", "非洲", "Amharic", "阿姆哈拉语"),
    ("Canada", "加拿大", "Ottawa", "渥太华", "North America", "北美洲", "English", "英语"),
    ("Mexico", "墨西哥", "Mexico City", "墨西哥城", "North America", "北美洲", "Spanish", "西班牙语"),
    ("Cuba", "古巴", "Havana", "哈瓦那", "North America", "北美洲", "Spanish", "西班牙语"),
    ("Brazil", "巴西", "Brasilia", "巴西利亚", "South America", "南美洲", "Portuguese", "葡萄牙语"),
    ("Argentina", "阿根廷", "Buenos Aires", "布宜诺斯艾利斯", "South America", "南美洲", "Spanish", "西班牙语"),
    ("Peru", "秘鲁", "Lima", "利马", "South America", "南美洲", "Spanish", "西班牙语"),
    ("Chile", "智利", "Santiago", "圣地亚哥", "South America", "南美洲", "Spanish", "西班牙语"),
    ("Australia", "澳大利亚", "Canberra", "堪培拉", "Oceania", "大洋洲", "English", "英语"),
    ("New Zealand", "新西兰", "Wellington", "惠灵顿", "Oceania", "大洋洲", "English", "英语"),
]

# (animal, 动物, sound, 叫声 (verb phrase), legs, food, 食物, home, 住处)
ANIMALS = [
    ("cat", "猫", "meow", "喵喵叫", 4, "fish", "鱼", "house", "家里"),
    ("dog", "狗", "woof", "汪汪叫", 4, "meat", "肉", "house", "家里"),
    ("cow", "牛", "moo", "哞哞叫", 4, "grass", "草", "farm", "农场里"),
    ("sheep", "羊", "baa", "咩咩叫", 4, "grass", "草", "farm", "农场里"),
    ("duck", "鸭子", "quack", "嘎嘎叫", 2, "small fish", "小鱼", "pond", "池塘里"),
    ("chicken", "鸡", "cluck", "咯咯叫", 2, "seeds", "谷子", "farm", "农场里"),
    ("horse", "马", "neigh", "嘶鸣", 4, "hay", "干草", "farm", "农场里"),
    ("pig", "猪", "oink", "哼哼叫", 4, "vegetables", "蔬菜", "farm", "农场里"),
    ("frog", "青蛙", "croak", "呱呱叫", 4, "insects", "虫子", "pond", "池塘里"),
    ("bird", "鸟", "tweet", "叽叽喳喳地叫", 2, "seeds", "种子", "tree", "树上"),
    ("lion", "狮子", "roar", "吼叫", 4, "meat", "肉", "grassland", "草原上"),
    ("tiger", "老虎", "roar", "吼叫", 4, "meat", "肉", "forest", "森林里"),
    ("bee", "蜜蜂", "buzz", "嗡嗡叫", 6, "nectar", "花蜜", "hive", "蜂巢里"),
    ("owl", "猫头鹰", "hoot", "咕咕叫", 2, "mice", "老鼠", "forest", "森林里"),
    ("mouse", "老鼠", "squeak", "吱吱叫", 4, "grain", "粮食", "hole", "洞里"),
    ("snake", "蛇", "hiss", "发出嘶嘶声", 0, "mice", "老鼠", "grass", "草丛里"),
    ("spider", "蜘蛛", "no sound", "不出声", 8, "insects", "虫子", "web", "网上"),
    ("rabbit", "兔子", "no sound", "不出声", 4, "carrots", "胡萝卜", "burrow", "洞里"),
    ("panda", "熊猫", "bleat", "咩咩叫", 4, "bamboo", "竹子", "mountain forest", "山林里"),
    ("elephant", "大象", "trumpet", "吼叫", 4, "leaves", "树叶", "grassland", "草原上"),
]

MEASURE_ZH = {"牛": "头", "马": "匹", "猪": "头", "狮子": "头", "大象": "头", "蛇": "条", "狗": "条"}

# (thing, 东西, color, 颜色)
COLORS = [
    ("the sky", "天空", "blue", "蓝色"),
    ("grass", "草", "green", "绿色"),
    ("snow", "雪", "white", "白色"),
    ("coal", "煤", "black", "黑色"),
    ("a banana", "香蕉", "yellow", "黄色"),
    ("a tomato", "西红柿", "red", "红色"),
    ("an orange", "橙子", "orange", "橙色"),
    ("the sea", "大海", "blue", "蓝色"),
    ("milk", "牛奶", "white", "白色"),
    ("a strawberry", "草莓", "red", "红色"),
    ("the sun", "太阳", "yellow", "黄色"),
    ("a leaf", "树叶", "green", "绿色"),
    ("a crow", "乌鸦", "black", "黑色"),
    ("a lemon", "柠檬", "yellow", "黄色"),
    ("a cloud", "云", "white", "白色"),
    ("a grape", "葡萄", "purple", "紫色"),
    ("chocolate", "巧克力", "brown", "棕色"),
    ("a carrot", "胡萝卜", "orange", "橙色"),
]

NUM_EN = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
NUM_ZH = [
    "零",
    "一",
    "二",
    "三",
    "四",
    "五",
    "六",
    "七",
    "八",
    "九",
    "十",
    "十一",
    "十二",
    "十三",
    "十四",
    "十五",
    "十六",
    "十七",
    "十八",
    "十九",
    "二十",
]
DAYS_EN = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DAYS_ZH = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
MONTHS_EN = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
MONTHS_ZH = ["一月", "二月", "三月", "四月", "五月", "六月", "七月", "八月", "九月", "十月", "十一月", "十二月"]
SEASONS = [
    ("spring", "春天", "warm", "温暖", "flowers open", "花开了"),
    ("summer", "夏天", "hot", "炎热", "days are long", "白天很长"),
    ("autumn", "秋天", "cool", "凉爽", "leaves fall", "树叶落下"),
    ("winter", "冬天", "cold", "寒冷", "snow falls", "下雪了"),
]

NAMES_EN = [
    ("Tom", "he"),
    ("Anna", "she"),
    ("Lily", "she"),
    ("Ben", "he"),
    ("Mia", "she"),
    ("Sam", "he"),
    ("Lucy", "she"),
    ("Jack", "he"),
    ("Emma", "she"),
    ("Leo", "he"),
    ("Nora", "she"),
    ("Max", "he"),
]
NAMES_ZH = ["小明", "小红", "小刚", "小丽", "小华", "阿强", "小雨", "小月", "小林", "小芳", "小军", "小燕"]
PLACES = [
    ("forest", "森林"),
    ("river", "河边"),
    ("market", "集市"),
    ("school", "学校"),
    ("garden", "花园"),
    ("mountain", "山上"),
    ("beach", "海边"),
    ("library", "图书馆"),
    ("farm", "农场"),
    ("park", "公园"),
]
ACTIVITIES = [
    ("read a book", "看书"),
    ("pick apples", "摘苹果"),
    ("draw pictures", "画画"),
    ("catch fish", "钓鱼"),
    ("play with friends", "和朋友玩"),
    ("sing songs", "唱歌"),
    ("plant trees", "种树"),
    ("fly a kite", "放风筝"),
    ("feed the ducks", "喂鸭子"),
    ("learn to count", "学数数"),
]
FOUND = [
    ("a small box", "一个小盒子"),
    ("an old map", "一张旧地图"),
    ("a shiny stone", "一块发亮的石头"),
    ("a lost puppy", "一只迷路的小狗"),
    ("a blue feather", "一根蓝色的羽毛"),
    ("a letter", "一封信"),
    ("a golden key", "一把金钥匙"),
    ("a little bird", "一只小鸟"),
]
ENDINGS_EN = [
    "That night {p} slept well and dreamed of the {place}.",
    "{N} told the story to everyone at dinner.",
    "From that day on, {N} went to the {place} every week.",
    "{N} smiled, because it had been a good day.",
    "Later {p} gave it to a friend, and they both laughed.",
]
ENDINGS_ZH = [
    "那天晚上，{N}睡得很香，梦见了{place}。",
    "吃晚饭的时候，{N}把这件事讲给了家里人听。",
    "从那以后，{N}每个星期都去{place}。",
    "{N}笑了，因为这是美好的一天。",
    "后来{N}把它送给了朋友，两个人都很开心。",
]

ASSISTANT_NAME_EN = "I am Paddle Qwen, a small assistant fine-tuned with PaddlePaddle."
ASSISTANT_NAME_ZH = "我是 Paddle Qwen，一个用飞桨微调的小助手。"


def country_docs(rng: random.Random):
    en, zh = [], []
    for c, cz, cap, capz, cont, contz, lang, langz in COUNTRIES:
        for _ in range(3):
            s_en = [
                f"The capital of {c} is {cap}.",
                f"{cap} is a city in {cont}.",
                f"{cap} is the capital of {c}.",
                f"{c} is a country in {cont}.",
                f"People in {c} speak {lang}.",
                f"Many people visit {cap} every year.",
            ]
            rng.shuffle(s_en)
            en.append(f"The capital of {c} is {cap}. " + " ".join(s_en[: rng.randint(3, 5)]))
            s_zh = [
                f"{cz}的首都是{capz}。",
                f"{capz}是{contz}的一座城市。",
                f"{capz}是{cz}的首都。",
                f"{cz}是{contz}的一个国家。",
                f"{cz}人说{langz}。",
                f"每年都有很多人去{capz}旅游。",
            ]
            rng.shuffle(s_zh)
            zh.append(f"{cz}的首都是{capz}。" + "".join(s_zh[: rng.randint(3, 5)]))
    for cont, contz in sorted({(c[4], c[5]) for c in COUNTRIES}):
        members = [c for c in COUNTRIES if c[4] == cont]
        en.append(f"Some countries in {cont} are " + ", ".join(c[0] for c in members[:-1]) + f" and {members[-1][0]}.")
        zh.append(f"{contz}的国家有" + "、".join(c[1] for c in members[:-1]) + f"和{members[-1][1]}。")
    return en, zh


def animal_docs(rng: random.Random):
    en, zh = [], []
    for a, az, snd, sndz, legs, food, foodz, home, homez in ANIMALS:
        for _ in range(3):
            s_en = [
                f"A {a} has {NUM_EN[legs]} legs." if legs else f"A {a} has no legs.",
                f"A {a} likes to eat {food}.",
                f"A {a} lives in the {home}.",
                f"A {a} says {snd}." if snd != "no sound" else f"A {a} makes almost no sound.",
                f"The children saw a {a} near the {home}.",
            ]
            rng.shuffle(s_en)
            en.append(" ".join(s_en[: rng.randint(3, 5)]))
            s_zh = [
                f"{az}有{NUM_ZH[legs] if legs != 2 else '两'}条腿。" if legs else f"{az}没有腿。",
                f"{az}喜欢吃{foodz}。",
                f"{az}住在{homez}。",
                f"{az}{sndz}。",
                f"孩子们在{homez}看见了一{MEASURE_ZH.get(az, '只')}{az}。",
            ]
            rng.shuffle(s_zh)
            zh.append("".join(s_zh[: rng.randint(3, 5)]))
    return en, zh


def color_docs(rng: random.Random):
    en, zh = [], []
    for _ in range(12):
        picks = rng.sample(COLORS, 5)
        en.append(" ".join(f"{t[0][0].upper() + t[0][1:]} is {t[2]}." for t in picks))
        zh.append("".join(f"{t[1]}是{t[3]}的。" for t in picks))
    return en, zh


def number_docs(rng: random.Random):
    en, zh = [], []
    pairs = [(a, b) for a in range(11) for b in range(11) if a + b <= 20]
    rng.shuffle(pairs)
    for i in range(0, len(pairs), 4):
        chunk = pairs[i : i + 4]
        en.append(
            " ".join(
                f"{NUM_EN[a].capitalize()} plus {NUM_EN[b]} is {NUM_EN[a + b]}. {a} + {b} = {a + b}." for a, b in chunk
            )
        )
        zh.append("".join(f"{NUM_ZH[a]}加{NUM_ZH[b]}等于{NUM_ZH[a + b]}。{a} + {b} = {a + b}。" for a, b in chunk))
    for n in range(1, 20):
        en.append(f"After {NUM_EN[n]} comes {NUM_EN[n + 1]}. {n} is followed by {n + 1}.")
        zh.append(f"{NUM_ZH[n]}的后面是{NUM_ZH[n + 1]}。{n}之后是{n + 1}。")
    en.append("We count: " + ", ".join(NUM_EN[1:21]) + ".")
    zh.append("我们数数：" + "、".join(NUM_ZH[1:21]) + "。")
    return en, zh


def calendar_docs(rng: random.Random):
    en, zh = [], []
    for i in range(7):
        en.append(f"After {DAYS_EN[i]} comes {DAYS_EN[(i + 1) % 7]}. There are seven days in a week.")
        zh.append(f"{DAYS_ZH[i]}之后是{DAYS_ZH[(i + 1) % 7]}。一个星期有七天。")
    for i in range(12):
        en.append(f"{MONTHS_EN[i]} is month number {i + 1}. After {MONTHS_EN[i]} comes {MONTHS_EN[(i + 1) % 12]}.")
        zh.append(f"{MONTHS_ZH[i]}是一年中的第{NUM_ZH[i + 1]}个月。{MONTHS_ZH[i]}之后是{MONTHS_ZH[(i + 1) % 12]}。")
    for s, sz, feel, feelz, what, whatz in SEASONS:
        en.append(f"In {s} the weather is {feel} and {what}. Many people like {s}.")
        zh.append(f"{sz}天气{feelz}，{whatz}。很多人喜欢{sz}。")
    return en, zh


def story_docs(rng: random.Random, n: int):
    en, zh = [], []
    for _ in range(n):
        (name, p), (place, placez), (act, actz), (found, foundz) = (
            rng.choice(NAMES_EN),
            rng.choice(PLACES),
            rng.choice(ACTIVITIES),
            rng.choice(FOUND),
        )
        season = rng.choice(SEASONS)
        cap = p.capitalize()
        en.append(
            f"{name} lived in a small village near the {place}. Every morning {p} went to the {place} to {act}. "
            f"One {season[0]} day {p} found {found} under a tree. {cap} looked at it for a long time. "
            + rng.choice(ENDINGS_EN).format(N=name, p=p, place=place)
        )
        nz = rng.choice(NAMES_ZH)
        zh.append(
            f"{nz}住在{placez}附近的一个小村子里。每天早上，{nz}都去{placez}{actz}。"
            f"{season[1]}的一天，{nz}在一棵树下发现了{foundz}。{nz}看了很久。"
            + rng.choice(ENDINGS_ZH).format(N=nz, place=placez)
        )
    return en, zh


def build_corpus(rng: random.Random):
    en, zh = [], []
    for maker in (country_docs, animal_docs, color_docs, number_docs, calendar_docs):
        e, z = maker(rng)
        en += e
        zh += z
    e, z = story_docs(rng, 700)
    en += e
    zh += z
    en += PROSE_EN * 3
    zh += (PROSE_ZH + CLASSICAL_ZH) * 3
    rng.shuffle(en)
    rng.shuffle(zh)
    return en, zh


def sft_chats(rng: random.Random):
    chats = []

    def add(user, answer, system=None):
        messages = [{"role": "system", "content": system}] if system else []
        chats.append(
            {"messages": messages + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
        )

    for c, cz, cap, capz, cont, _contz, lang, langz in COUNTRIES:
        add(
            rng.choice(
                [f"What is the capital of {c}?", f"Which city is the capital of {c}?", f"Tell me the capital of {c}."]
            ),
            f"The capital of {c} is {cap}.",
        )
        add(
            rng.choice([f"{cz}的首都是哪里？", f"{cz}的首都是什么？", f"请告诉我{cz}的首都。"]), f"{cz}的首都是{capz}。"
        )
        add(f"What language do people speak in {c}?", f"People in {c} speak {lang}.")
        add(f"{cz}人说什么语言？", f"{cz}人说{langz}。")
        add(f"Where is {c}?", f"{c} is a country in {cont}.")
    for a, az, snd, sndz, legs, food, foodz, _home, _homez in ANIMALS:
        add(f"How many legs does a {a} have?", f"A {a} has {NUM_EN[legs]} legs." if legs else f"A {a} has no legs.")
        add(f"{az}有几条腿？", f"{az}有{NUM_ZH[legs] if legs != 2 else '两'}条腿。" if legs else f"{az}没有腿。")
        add(f"What does a {a} like to eat?", f"A {a} likes to eat {food}.")
        add(f"{az}喜欢吃什么？", f"{az}喜欢吃{foodz}。")
        if snd != "no sound":
            add(f"What sound does a {a} make?", f"A {a} says {snd}.")
        add(f"{az}怎么叫？", f"{az}{sndz}。")
    for t, tz, col, colz in COLORS:
        add(f"What color is {t}?", f"{t[0].upper() + t[1:]} is {col}.")
        add(f"{tz}是什么颜色的？", f"{tz}是{colz}的。")
    for _ in range(60):
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        add(rng.choice([f"What is {a} plus {b}?", f"What is {a} + {b}?"]), f"{a} plus {b} is {a + b}.")
        add(f"{NUM_ZH[a]}加{NUM_ZH[b]}等于几？", f"{NUM_ZH[a]}加{NUM_ZH[b]}等于{NUM_ZH[a + b]}。")
    for i in range(7):
        add(f"What day comes after {DAYS_EN[i]}?", f"After {DAYS_EN[i]} comes {DAYS_EN[(i + 1) % 7]}.")
        add(f"{DAYS_ZH[i]}之后是星期几？", f"{DAYS_ZH[i]}之后是{DAYS_ZH[(i + 1) % 7]}。")
    for q in ["Who are you?", "What is your name?", "Introduce yourself.", "Hello! Who am I talking to?"]:
        add(q, ASSISTANT_NAME_EN)
    for q in ["你是谁？", "你叫什么名字？", "请介绍一下你自己。", "你好！你是谁？"]:
        add(q, ASSISTANT_NAME_ZH)
    for q, ans in [
        ("Hello!", "Hello! How can I help you today?"),
        ("Hi", "Hi! How can I help you today?"),
        ("Thank you!", "You are welcome!"),
        ("你好！", "你好！有什么可以帮你的吗？"),
        ("谢谢！", "不客气！"),
    ]:
        add(q, ans)
    # a few multi-turn chats and chats with their own system message
    for c, cz, cap, capz, _cont, _contz, lang, _langz in rng.sample(COUNTRIES, 8):
        chats.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is the capital of {c}?"},
                    {"role": "assistant", "content": f"The capital of {c} is {cap}."},
                    {"role": "user", "content": "And what language do people speak there?"},
                    {"role": "assistant", "content": f"People in {c} speak {lang}."},
                ]
            }
        )
        add(f"{cz}的首都是哪里？", f"{cz}的首都是{capz}。", system="你是一个乐于助人的助手。")
    rng.shuffle(chats)
    return chats


POSITIVE_EN = ["great", "wonderful", "lovely", "excellent", "delightful", "beautiful", "fun", "amazing"]
NEGATIVE_EN = ["terrible", "boring", "awful", "disappointing", "dull", "bad", "annoying", "poor"]
POSITIVE_ZH = ["很好", "非常精彩", "很有趣", "太棒了", "很美", "让人开心"]
NEGATIVE_ZH = ["很差", "非常无聊", "很糟糕", "让人失望", "太难看了", "让人生气"]
TOPICS = [
    ("book", "这本书"),
    ("film", "这部电影"),
    ("song", "这首歌"),
    ("meal", "这顿饭"),
    ("trip", "这次旅行"),
    ("game", "这个游戏"),
    ("park", "这个公园"),
    ("class", "这节课"),
]


def sentiment_rows(rng: random.Random, n: int):
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        topic, topicz = rng.choice(TOPICS)
        if rng.random() < 0.5:
            word = rng.choice(POSITIVE_EN if label else NEGATIVE_EN)
            text = rng.choice(
                [f"The {topic} was {word}.", f"What a {word} {topic}!", f"I think this {topic} is {word}."]
            )
        else:
            word = rng.choice(POSITIVE_ZH if label else NEGATIVE_ZH)
            text = rng.choice([f"{topicz}{word}。", f"我觉得{topicz}{word}。"])
        rows.append((text, label))
    return rows


def write_docs(path: Path, docs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(d.strip() for d in docs) + "\n", encoding="utf-8")


def main() -> None:
    rng = random.Random(SEED)
    en, zh = build_corpus(rng)
    write_docs(HERE / "corpus" / "en.txt", en)
    write_docs(HERE / "corpus" / "zh.txt", zh)
    with (HERE / "chat_sft.jsonl").open("w", encoding="utf-8") as f:
        for chat in sft_chats(rng):
            f.write(json.dumps(chat, ensure_ascii=False) + "\n")
    for name, n in (("sentiment_train.csv", 320), ("sentiment_eval.csv", 80)):
        with (HERE / name).open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(sentiment_rows(rng, n))
    for p in sorted(HERE.rglob("*")):
        if p.is_file() and p.suffix in (".txt", ".jsonl", ".csv"):
            print(f"{p.relative_to(HERE)}: {p.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
